//! The stability monitor: per-site peak |x|, NaN and inf counts, and headroom to the maximum of
//! the dtype that holds the tensor. Statistics are reduced on the device and read back once per
//! forward pass, so the cheap mode costs one small transfer per call.

use burn::prelude::{Backend, Tensor};
use burn::tensor::{DType, FloatDType};

use crate::observe::{Observer, Op, Site};

/// How much the monitor looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorMode {
    /// Non-finite check on each layer's residual output and on the logits.
    Cheap,
    /// Every op group of every layer (norms, attention output, residual adds, gate/up/down, logits).
    Full,
}

/// Statistics of one observed tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteStats {
    /// Where it was observed.
    pub site: Site,
    /// The dtype that held it.
    pub dtype: DType,
    /// Largest finite |x| (0 when none is finite).
    pub peak_abs: f32,
    /// Number of NaN values.
    pub nan: usize,
    /// Number of ±inf values.
    pub inf: usize,
}

impl SiteStats {
    /// `peak_abs / max(dtype)`: 1.0 means the dtype's range is exhausted.
    pub fn headroom_used(&self) -> f32 {
        self.peak_abs / dtype_max(self.dtype)
    }

    /// Whether the tensor held NaN or inf.
    pub fn is_finite(&self) -> bool {
        self.nan == 0 && self.inf == 0
    }
}

/// Largest finite value of a float dtype.
pub fn dtype_max(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => 65504.0,
        DType::BF16 => 3.389_531_4e38,
        _ => f32::MAX,
    }
}

/// Collects [`SiteStats`] during forward passes.
pub struct StabilityMonitor<B: Backend> {
    mode: MonitorMode,
    /// Device-side `[peak, nan, inf]` per site, not yet read back.
    pending: Vec<(Site, DType, Tensor<B, 1>)>,
    stats: Vec<SiteStats>,
}

impl<B: Backend> StabilityMonitor<B> {
    /// A monitor in `mode`.
    pub fn new(mode: MonitorMode) -> Self {
        StabilityMonitor {
            mode,
            pending: Vec::new(),
            stats: Vec::new(),
        }
    }

    /// The mode.
    pub fn mode(&self) -> MonitorMode {
        self.mode
    }

    /// Reads back what the last forward passes observed and returns every site's statistics, in
    /// execution order.
    pub fn stats(&mut self) -> &[SiteStats] {
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            let (meta, tensors): (Vec<_>, Vec<_>) =
                pending.into_iter().map(|(s, d, t)| ((s, d), t)).unzip();
            let values = Tensor::cat(tensors, 0)
                .into_data()
                .to_vec::<f32>()
                .expect("stats are f32");
            for ((site, dtype), v) in meta.into_iter().zip(values.chunks_exact(3)) {
                self.stats.push(SiteStats {
                    site,
                    dtype,
                    peak_abs: v[0],
                    nan: v[1] as usize,
                    inf: v[2] as usize,
                });
            }
        }
        &self.stats
    }

    /// The first site that held a NaN or inf, in execution order.
    pub fn first_nonfinite(&mut self) -> Option<SiteStats> {
        self.stats().iter().find(|s| !s.is_finite()).cloned()
    }

    /// The largest finite |x| observed before `site`'s entry (execution order), with its site.
    pub fn peak_before(&mut self, index: usize) -> Option<SiteStats> {
        self.stats()[..index]
            .iter()
            .max_by(|a, b| a.peak_abs.total_cmp(&b.peak_abs))
            .cloned()
    }

    /// Largest finite |x| per decoder layer over every observed site of that layer.
    pub fn layer_peaks(&mut self, layers: usize) -> Vec<f32> {
        let mut peaks = vec![0f32; layers];
        for s in self.stats() {
            if let Some(l) = s.site.layer {
                if l < layers {
                    peaks[l] = peaks[l].max(s.peak_abs);
                }
            }
        }
        peaks
    }

    /// Forgets everything observed so far.
    pub fn clear(&mut self) {
        self.pending.clear();
        self.stats.clear();
    }
}

impl<B: Backend> Observer<B> for StabilityMonitor<B> {
    fn wants(&self, site: Site) -> bool {
        match self.mode {
            MonitorMode::Full => true,
            MonitorMode::Cheap => matches!(site.op, Op::LayerOutput | Op::Logits),
        }
    }

    fn observe(&mut self, site: Site, tensor: &Tensor<B, 2>) {
        let dtype = tensor.dtype();
        let x = tensor.clone().cast(FloatDType::F32);
        let nan = x.clone().is_nan();
        let inf = x.clone().is_inf();
        let bad = nan.clone().bool_or(inf.clone());
        let peak = x.abs().mask_fill(bad, 0.0).max();
        let nan = nan.int().sum().float().cast(FloatDType::F32);
        let inf = inf.int().sum().float().cast(FloatDType::F32);
        self.pending
            .push((site, dtype, Tensor::cat(vec![peak, nan, inf], 0)));
    }
}

/// Re-runs `ids` from an empty cache with a full monitor and describes the first op that went
/// non-finite, as an [`Error::NonFinite`](crate::Error::NonFinite) for generation step `step`.
/// Returns `Ok(None)` when the full run stays finite.
pub fn locate_nonfinite<B: Backend>(
    model: &crate::Qwen2Model<B>,
    ids: &[u32],
    step: usize,
) -> crate::Result<Option<crate::Error>> {
    let mut cache = model.new_cache(ids.len());
    let mut monitor = StabilityMonitor::new(MonitorMode::Full);
    model.forward_observed(ids, &mut cache, crate::LogitsFor::All, &mut monitor)?;
    let Some(bad) = monitor.first_nonfinite() else {
        return Ok(None);
    };
    let index = monitor.stats().iter().position(|s| *s == bad).unwrap_or(0);
    let before = monitor.peak_before(index);
    let (peak_before, peak_site) =
        before.map_or((0.0, "-".to_string()), |b| (b.peak_abs, b.site.to_string()));
    tracing::warn!(site = %bad.site, dtype = ?bad.dtype, nan = bad.nan, inf = bad.inf, "first non-finite op");
    Ok(Some(crate::Error::NonFinite(Box::new(
        crate::error::NonFiniteReport {
            site: bad.site.to_string(),
            layer: bad.site.layer.map_or("-".into(), |l| l.to_string()),
            dtype: format!("{:?}", bad.dtype).to_lowercase(),
            nan: bad.nan,
            inf: bad.inf,
            peak_before,
            peak_site,
            step,
        },
    ))))
}

/// A forward pass that refuses to return non-finite logits: watched by a monitor in `mode`, and
/// on any non-finite value re-run with a full monitor to name the first op that overflowed.
pub fn forward_checked<B: Backend>(
    model: &crate::Qwen2Model<B>,
    ids: &[u32],
    which: crate::LogitsFor,
    mode: MonitorMode,
) -> crate::Result<Tensor<B, 2>> {
    let mut cache = model.new_cache(ids.len());
    let mut monitor = StabilityMonitor::new(mode);
    let logits = model.forward_observed(ids, &mut cache, which, &mut monitor)?;
    if monitor.first_nonfinite().is_none() {
        return Ok(logits);
    }
    Err(
        locate_nonfinite(model, ids, 0)?.unwrap_or(crate::Error::NonFiniteLogits {
            step: 0,
            nan: 0,
            inf: 0,
        }),
    )
}
