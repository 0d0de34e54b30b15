//! Learning-rate schedules with the formulas of HF transformers' `get_scheduler`
//! (`LambdaLR`: optimizer step `k`, counted from 0, runs at `lr · λ(k)`).

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

/// A schedule's shape after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrSchedule {
    /// Constant after a linear warm-up (HF `constant_with_warmup`; `constant` when there is no
    /// warm-up).
    Constant,
    /// Linear decay to 0 at the last step (HF `linear`).
    Linear,
    /// Half a cosine down to 0 at the last step (HF `cosine`, `num_cycles = 0.5`).
    Cosine,
}

impl LrSchedule {
    /// `λ(step)` for `warmup` warm-up steps out of `total`.
    pub fn factor(self, step: usize, warmup: usize, total: usize) -> f64 {
        let (s, w, t) = (step as f64, warmup as f64, total as f64);
        if step < warmup {
            return s / w.max(1.0);
        }
        match self {
            LrSchedule::Constant => 1.0,
            LrSchedule::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
            LrSchedule::Cosine => {
                let progress = (s - w) / (t - w).max(1.0);
                (0.5 * (1.0 + (PI * 0.5 * 2.0 * progress).cos())).max(0.0)
            }
        }
    }
}

impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LrSchedule::Constant => "constant",
            LrSchedule::Linear => "linear",
            LrSchedule::Cosine => "cosine",
        })
    }
}

impl FromStr for LrSchedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "constant" => Ok(LrSchedule::Constant),
            "linear" => Ok(LrSchedule::Linear),
            "cosine" => Ok(LrSchedule::Cosine),
            _ => Err(format!(
                "unknown schedule '{s}' (expected constant, linear or cosine)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hf_formulas() {
        // HF: get_cosine_schedule_with_warmup(warmup=3, total=20)
        let c = LrSchedule::Cosine;
        assert_eq!(c.factor(0, 3, 20), 0.0);
        assert!((c.factor(1, 3, 20) - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(c.factor(3, 3, 20), 1.0);
        let mid = 0.5 * (1.0 + (PI * 7.0 / 17.0).cos());
        assert!((c.factor(10, 3, 20) - mid).abs() < 1e-15);
        assert!((LrSchedule::Linear.factor(10, 0, 20) - 0.5).abs() < 1e-15);
        assert_eq!(LrSchedule::Constant.factor(0, 0, 20), 1.0);
        assert_eq!(LrSchedule::Linear.factor(25, 0, 20), 0.0);
    }
}
