//! Dynamic loss scaling with `torch.amp.GradScaler`'s exact semantics: the loss is multiplied by
//! the scale before backward, gradients are unscaled in f32 by `1/scale` computed in f64 and
//! rounded to f32, a step with any inf/NaN gradient is skipped and the scale backs off, and
//! after `growth_interval` good steps in a row it grows (kept only if finite).

use serde::{Deserialize, Serialize};

/// GradScaler's settings (PyTorch's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalerConfig {
    /// Starting scale (`init_scale`, 2¹⁶).
    pub init_scale: f64,
    /// Multiplier after `growth_interval` good steps (2).
    pub growth_factor: f64,
    /// Multiplier after a step with inf/NaN gradients (0.5).
    pub backoff_factor: f64,
    /// Good steps in a row before the scale grows (2000).
    pub growth_interval: usize,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        ScalerConfig {
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
        }
    }
}

/// The scaler's state: the scale (an f32, as torch keeps it) and the good steps since the
/// last change.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// Settings.
    pub config: ScalerConfig,
    /// Current scale.
    pub scale: f32,
    /// Consecutive good steps since the scale last changed (`_growth_tracker`).
    pub growth_tracker: usize,
}

impl LossScaler {
    /// A scaler at `config.init_scale`.
    pub fn new(config: ScalerConfig) -> Self {
        LossScaler {
            config,
            scale: config.init_scale as f32,
            growth_tracker: 0,
        }
    }

    /// `1/scale` as torch computes it: `scale.double().reciprocal().float()`.
    pub fn inv_scale(&self) -> f32 {
        (1.0 / self.scale as f64) as f32
    }

    /// `_amp_update_scale_`: back off on `found_inf`, else count the good step and grow
    /// after `growth_interval` of them.
    pub fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= self.config.backoff_factor as f32;
            self.growth_tracker = 0;
            return;
        }
        let successful = self.growth_tracker + 1;
        if successful == self.config.growth_interval {
            let grown = self.scale * self.config.growth_factor as f32;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.growth_tracker = 0;
        } else {
            self.growth_tracker = successful;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaler(interval: usize) -> LossScaler {
        LossScaler::new(ScalerConfig {
            growth_interval: interval,
            ..Default::default()
        })
    }

    #[test]
    fn backs_off_on_overflow_and_resets_the_count() {
        let mut s = scaler(3);
        s.update(false);
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 2));
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
        s.update(true);
        assert_eq!(s.scale, 16384.0);
    }

    #[test]
    fn grows_after_the_interval_of_good_steps() {
        let mut s = scaler(3);
        for _ in 0..3 {
            s.update(false);
        }
        assert_eq!((s.scale, s.growth_tracker), (131072.0, 0));
        for _ in 0..2 {
            s.update(false);
        }
        assert_eq!(s.scale, 131072.0);
        s.update(false);
        assert_eq!(s.scale, 262144.0);
    }

    #[test]
    fn growth_that_would_overflow_f32_is_dropped() {
        let mut s = scaler(1);
        s.scale = f32::MAX;
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (f32::MAX, 0));
    }

    #[test]
    fn resumes_mid_interval_from_its_serialized_state() {
        let mut a = scaler(4);
        a.update(false);
        a.update(false);
        let saved = serde_json::to_string(&a).unwrap();
        let mut b: LossScaler = serde_json::from_str(&saved).unwrap();
        for s in [&mut a, &mut b] {
            s.update(false);
            s.update(false);
        }
        assert_eq!(a, b);
        assert_eq!(a.scale, 131072.0);
    }

    #[test]
    fn inverse_is_rounded_from_f64() {
        let mut s = scaler(3);
        s.scale = 3.0;
        assert_eq!(s.inv_scale(), (1.0f64 / 3.0) as f32);
    }
}
