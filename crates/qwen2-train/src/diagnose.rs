//! The training analogue of `qwen2 diagnose` (`qwen2 finetune --dry-run`): one forward and
//! backward per policy on the first micro-batch, with the stability monitor on the forward pass
//! and gradient probes on the backward pass. Per layer: the peak |activation| and peak |gradient|
//! against the f16 range; the share of gradient values that would underflow to 0 in f16, without
//! and with loss scaling; which policies stay finite.

use qwen2_core::monitor::{MonitorMode, StabilityMonitor};
use qwen2_core::precision::TrainPolicy;

use qwen2_core::train_kernels::TrainingKernels;

use crate::anomaly::{first_nonfinite, GradProbe, GradStats};
use crate::error::Result;
use crate::options::FinetuneOptions;
use crate::trainer::Trainer;

/// One policy's forward and backward on the first micro-batch.
#[derive(Debug, Clone)]
pub struct PolicyDiagnosis {
    /// The policy.
    pub policy: TrainPolicy,
    /// The loss scale backward ran with (1 without scaling).
    pub scale: f32,
    /// The micro-batch's loss contribution (NaN/inf when the forward pass overflowed).
    pub loss: f64,
    /// The first forward op that held an inf or NaN, with its dtype.
    pub forward_nonfinite: Option<String>,
    /// The first site, in backward order, whose gradient held an inf or NaN.
    pub backward_nonfinite: Option<String>,
    /// Peak finite |activation| per decoder layer.
    pub layer_activation_peaks: Vec<f32>,
    /// Peak finite |gradient| per decoder layer (of the scaled loss).
    pub layer_gradient_peaks: Vec<f32>,
    /// Gradient values probed, and how many non-zero ones would round to 0 in f16.
    pub gradient_values: usize,
    /// See `gradient_values`.
    pub f16_underflow: usize,
}

impl PolicyDiagnosis {
    /// Whether the forward and backward passes stayed finite.
    pub fn finite(&self) -> bool {
        self.loss.is_finite()
            && self.forward_nonfinite.is_none()
            && self.backward_nonfinite.is_none()
    }
}

/// Runs `policies` (each must be computable on `device`) on `opts`'s first micro-batch;
/// `f16-scaled` runs at `opts.scaler.init_scale`. `f32` is also run at that scale, so its
/// underflow share shows what scaling saves. Writes nothing.
pub fn diagnose_training<B: GradProbe>(
    opts: &FinetuneOptions,
    policies: &[TrainPolicy],
    device: &B::Device,
    kernels: &dyn Fn() -> TrainingKernels<B>,
) -> Result<Vec<PolicyDiagnosis>> {
    let scratch = std::env::temp_dir().join(format!("qwen2-dry-run-{}", std::process::id()));
    let mut out = Vec::new();
    let mut runs: Vec<(TrainPolicy, f32)> = policies
        .iter()
        .map(|&p| {
            (
                p,
                if p.scaled() {
                    opts.scaler.init_scale as f32
                } else {
                    1.0
                },
            )
        })
        .collect();
    if policies.contains(&TrainPolicy::F32) {
        runs.push((TrainPolicy::F32, opts.scaler.init_scale as f32));
    }
    for (policy, scale) in runs {
        let mut o = opts.clone();
        o.precision = policy;
        o.out = scratch.clone();
        o.resume = None;
        let result = (|| -> Result<PolicyDiagnosis> {
            let mut t = Trainer::<B>::new(o, device)?.with_kernels(kernels());
            let layers = t.model().config().num_hidden_layers;
            let mut monitor = StabilityMonitor::new(MonitorMode::Full);
            let (loss, grads) = t.probe_gradients(scale, &mut monitor)?;
            let forward_nonfinite = monitor.first_nonfinite().map(|s| {
                format!("{} ({:?}: {} NaN, {} inf)", s.site, s.dtype, s.nan, s.inf).to_lowercase()
            });
            let backward_nonfinite = first_nonfinite(&grads).map(|(s, _, _)| {
                format!("{} ({:?}: {} NaN, {} inf)", s.site, s.dtype, s.nan, s.inf).to_lowercase()
            });
            Ok(PolicyDiagnosis {
                policy,
                scale,
                loss,
                forward_nonfinite,
                backward_nonfinite,
                layer_activation_peaks: monitor.layer_peaks(layers),
                layer_gradient_peaks: layer_peaks(&grads, layers),
                gradient_values: grads.iter().map(|g| g.numel).sum(),
                f16_underflow: grads.iter().map(|g| g.f16_underflow).sum(),
            })
        })();
        let _ = std::fs::remove_dir_all(&scratch);
        out.push(result?);
    }
    Ok(out)
}

fn layer_peaks(stats: &[GradStats], layers: usize) -> Vec<f32> {
    let mut peaks = vec![0f32; layers];
    for s in stats {
        if let Some(l) = s.site.layer.filter(|&l| l < layers) {
            peaks[l] = peaks[l].max(s.peak_abs);
        }
    }
    peaks
}
