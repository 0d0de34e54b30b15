//! `diagnose`: run every policy a device can run against the f32 plan, and report where and how
//! far each one drifts — or overflows.

use std::path::Path;

use burn::prelude::Backend;
use burn::tensor::FloatDType;

use crate::error::Result;
use crate::monitor::{MonitorMode, StabilityMonitor};
use crate::precision::{can_run, Hardware, Policy};
use crate::{LogitsFor, Qwen2Model};

/// The first op that went non-finite in one run.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstNonFinite {
    /// HF module path.
    pub site: String,
    /// Dtype that held it.
    pub dtype: String,
    /// NaN and inf counts.
    pub nan: usize,
    /// inf count.
    pub inf: usize,
    /// Largest finite |x| seen before it.
    pub peak_before: f32,
}

/// One policy's run.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRun {
    /// The policy.
    pub policy: Policy,
    /// Why it was not run (the device cannot compute one of its dtypes), if so.
    pub skipped: Option<String>,
    /// Whether every observed tensor and the logits were finite.
    pub finite: bool,
    /// The first non-finite op, if any.
    pub first_nonfinite: Option<FirstNonFinite>,
    /// Largest |logits - f32 logits| over all positions (finite runs only).
    pub max_abs_dlogits: Option<f32>,
    /// Fraction of positions whose argmax equals the f32 argmax.
    pub top1_agreement: Option<f32>,
    /// Mean over positions of KL(p_f32 ‖ p_policy), in nats.
    pub kl_divergence: Option<f64>,
    /// Largest finite |x| per decoder layer over all its ops.
    pub layer_peaks: Vec<f32>,
    /// Whether any op of each decoder layer held a NaN or inf.
    pub layer_nonfinite: Vec<bool>,
}

/// Every policy against f32.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    /// The device.
    pub hardware: Hardware,
    /// Prompt length.
    pub positions: usize,
    /// The runs, f32 first.
    pub runs: Vec<PolicyRun>,
}

struct Measured {
    logits: Vec<f32>,
    run: PolicyRun,
}

fn measure<B: Backend>(
    dir: &Path,
    device: &B::Device,
    policy: Policy,
    ids: &[u32],
) -> Result<Measured> {
    let model = Qwen2Model::<B>::load(dir, policy.plan(), device)?;
    let mut cache = model.new_cache(ids.len());
    let mut monitor = StabilityMonitor::new(MonitorMode::Full);
    let logits = model.forward_observed(ids, &mut cache, LogitsFor::All, &mut monitor)?;
    let logits = logits
        .cast(FloatDType::F32)
        .into_data()
        .to_vec::<f32>()
        .expect("f32");
    let layers = model.config().num_hidden_layers;
    let layer_peaks = monitor.layer_peaks(layers);
    let mut layer_nonfinite = vec![false; layers];
    for st in monitor.stats().iter().filter(|st| !st.is_finite()) {
        if let Some(l) = st.site.layer.filter(|l| *l < layers) {
            layer_nonfinite[l] = true;
        }
    }
    let first = monitor.first_nonfinite().map(|bad| {
        let index = monitor.stats().iter().position(|s| *s == bad).unwrap_or(0);
        FirstNonFinite {
            site: bad.site.to_string(),
            dtype: format!("{:?}", bad.dtype).to_lowercase(),
            nan: bad.nan,
            inf: bad.inf,
            peak_before: monitor.peak_before(index).map_or(0.0, |s| s.peak_abs),
        }
    });
    let finite = first.is_none() && logits.iter().all(|x| x.is_finite());
    Ok(Measured {
        logits,
        run: PolicyRun {
            policy,
            skipped: None,
            finite,
            first_nonfinite: first,
            max_abs_dlogits: None,
            top1_agreement: None,
            kl_divergence: None,
            layer_peaks,
            layer_nonfinite,
        },
    })
}

/// Runs f32 and then every other named policy `hardware` can compute on `ids`.
pub fn diagnose<B: Backend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
    hardware: Hardware,
    ids: &[u32],
) -> Result<Diagnosis> {
    let dir = dir.as_ref();
    let reference = measure::<B>(dir, device, Policy::F32, ids)?;
    let vocab = reference.logits.len() / ids.len();
    let mut runs = vec![reference.run.clone()];
    for &policy in Policy::ALL.iter().filter(|p| **p != Policy::F32) {
        if let Err(why) = can_run(&hardware, policy) {
            runs.push(PolicyRun {
                policy,
                skipped: Some(why),
                finite: false,
                first_nonfinite: None,
                max_abs_dlogits: None,
                top1_agreement: None,
                kl_divergence: None,
                layer_peaks: Vec::new(),
                layer_nonfinite: Vec::new(),
            });
            continue;
        }
        let mut m = measure::<B>(dir, device, policy, ids)?;
        if m.run.finite {
            let (dmax, top1, kl) = compare(&reference.logits, &m.logits, vocab);
            m.run.max_abs_dlogits = Some(dmax);
            m.run.top1_agreement = Some(top1);
            m.run.kl_divergence = Some(kl);
        }
        runs.push(m.run);
    }
    Ok(Diagnosis {
        hardware,
        positions: ids.len(),
        runs,
    })
}

/// (max |Δ|, top-1 agreement, mean KL(ref ‖ other)) over rows of `vocab` logits.
pub fn compare(reference: &[f32], other: &[f32], vocab: usize) -> (f32, f32, f64) {
    let rows = reference.len() / vocab;
    let mut dmax = 0f32;
    let (mut agree, mut kl) = (0usize, 0f64);
    for (r, o) in reference.chunks_exact(vocab).zip(other.chunks_exact(vocab)) {
        for (a, b) in r.iter().zip(o) {
            dmax = dmax.max((a - b).abs());
        }
        agree += (crate::sampling::argmax(r) == crate::sampling::argmax(o)) as usize;
        let (lr, lo) = (log_softmax(r), log_softmax(o));
        kl += lr
            .iter()
            .zip(&lo)
            .map(|(p, q)| p.exp() * (p - q))
            .sum::<f64>();
    }
    (dmax, agree as f32 / rows as f32, kl / rows as f64)
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) as f64;
    let lse = x.iter().map(|v| (*v as f64 - max).exp()).sum::<f64>().ln() + max;
    x.iter().map(|v| *v as f64 - lse).collect()
}
