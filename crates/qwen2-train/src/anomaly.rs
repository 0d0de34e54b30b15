//! The backward anomaly monitor (`--detect-anomaly`), the counterpart of
//! `torch.autograd.detect_anomaly`: an identity op at each HF module site of the forward pass
//! whose backward records the gradient flowing through it (NaN and inf counts, the largest
//! finite |g|, exact zeros). The first site, in backward order, whose gradient holds an inf or
//! NaN is where the backward pass went wrong. Nothing is inserted when the monitor is off.

use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::prelude::{Backend, Tensor};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, FloatDType, TensorPrimitive};
use qwen2_core::observe::{Observer, Site};

/// What the gradient at one site looked like.
#[derive(Debug, Clone, PartialEq)]
pub struct GradStats {
    /// The HF module path of the site.
    pub site: Site,
    /// The dtype the gradient was held in (the dtype of the forward tensor at the site).
    pub dtype: DType,
    /// NaN values.
    pub nan: usize,
    /// Infinite values.
    pub inf: usize,
    /// Largest finite |g|.
    pub peak_abs: f32,
    /// Values exactly 0.
    pub zeros: usize,
    /// Non-zero values below 2⁻²⁵ in magnitude: they would round to 0 in f16.
    pub f16_underflow: usize,
    /// Values in all.
    pub numel: usize,
}

impl GradStats {
    /// Whether every value was finite.
    pub fn is_finite(&self) -> bool {
        self.nan == 0 && self.inf == 0
    }
}

/// Magnitudes below this round to 0 in f16 (half the smallest subnormal, 2⁻²⁴).
pub const F16_UNDERFLOW: f32 = 2.980_232_2e-8;

type Pending<B> = Vec<(Site, DType, Tensor<B, 1>)>;

/// Where probes deposit what they saw, in backward order (device tensors, read back once).
#[derive(Clone)]
pub struct GradSink<B: Backend> {
    pending: Arc<Mutex<Pending<B>>>,
}

impl<B: Backend> std::fmt::Debug for GradSink<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GradSink")
    }
}

impl<B: Backend> Default for GradSink<B> {
    fn default() -> Self {
        GradSink {
            pending: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

impl<B: Backend> GradSink<B> {
    fn record(&self, site: Site, grad: Tensor<B, 2>) {
        let dtype = grad.dtype();
        let device = grad.device();
        let numel = grad.shape().num_elements() as f32;
        let g = grad.cast(FloatDType::F32);
        let nan = g.clone().is_nan();
        let inf = g.clone().is_inf();
        let bad = nan.clone().bool_or(inf.clone());
        let is_zero = g.clone().equal_elem(0.0);
        let zeros = is_zero.clone().int().sum().float();
        let abs = g.abs();
        let tiny = abs
            .clone()
            .lower_elem(F16_UNDERFLOW)
            .bool_and(is_zero.bool_not());
        let tiny = tiny.int().sum().float();
        let peak = abs.mask_fill(bad, 0.0).max();
        let count = |m: Tensor<B, 2, burn::tensor::Bool>| m.int().sum().float();
        let stats = Tensor::cat(
            vec![
                peak,
                count(nan),
                count(inf),
                zeros,
                tiny,
                Tensor::from_floats([numel], &device),
            ]
            .into_iter()
            .map(|t| t.cast(FloatDType::F32))
            .collect(),
            0,
        );
        self.pending
            .lock()
            .expect("grad sink")
            .push((site, dtype, stats));
    }

    /// Reads back everything recorded since the last call, in backward order.
    pub fn take(&self) -> Vec<GradStats> {
        let pending = std::mem::take(&mut *self.pending.lock().expect("grad sink"));
        if pending.is_empty() {
            return Vec::new();
        }
        let (meta, tensors): (Vec<_>, Vec<_>) =
            pending.into_iter().map(|(s, d, t)| ((s, d), t)).unzip();
        let values = Tensor::cat(tensors, 0)
            .into_data()
            .to_vec::<f32>()
            .expect("f32 stats");
        meta.into_iter()
            .zip(values.chunks_exact(6))
            .map(|((site, dtype), v)| GradStats {
                site,
                dtype,
                peak_abs: v[0],
                nan: v[1] as usize,
                inf: v[2] as usize,
                zeros: v[3] as usize,
                f16_underflow: v[4] as usize,
                numel: v[5] as usize,
            })
            .collect()
    }
}

/// The identity op of a probe.
#[derive(Debug)]
struct Probe;

/// What a probe's backward needs: where to record, and which site it sits at.
#[derive(Clone, Debug)]
struct ProbeState<B: Backend> {
    sink: GradSink<B>,
    site: Site,
}

impl<B: Backend> Backward<B, 1> for Probe {
    type State = ProbeState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<B>(&ops.node);
        let seen = Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(grad.clone()));
        ops.state.sink.record(ops.state.site, seen);
        if let Some(parent) = &ops.parents[0] {
            grads.register::<B>(parent.id, grad);
        }
    }
}

/// Autodiff backends that can insert gradient probes.
pub trait GradProbe: AutodiffBackend {
    /// `x` unchanged, with a backward that records the gradient reaching it at `site`.
    fn probe(
        x: Tensor<Self, 2>,
        site: Site,
        sink: &GradSink<Self::InnerBackend>,
    ) -> Tensor<Self, 2>;
}

impl<B: Backend, C: CheckpointStrategy> GradProbe for Autodiff<B, C> {
    fn probe(x: Tensor<Self, 2>, site: Site, sink: &GradSink<B>) -> Tensor<Self, 2> {
        let t = x.into_primitive().tensor();
        let state = ProbeState {
            sink: sink.clone(),
            site,
        };
        let prep = <Probe as Backward<B, 1>>::prepare::<C>(Probe, [t.node.clone()]);
        let out = match prep.compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(state, t.primitive),
            OpsKind::UnTracked(prep) => prep.finish(t.primitive),
        };
        Tensor::from_primitive(TensorPrimitive::Float(out))
    }
}

/// An observer that puts a probe at every site of the forward pass.
pub struct AnomalyProbes<B: GradProbe> {
    /// What the probes saw.
    pub sink: GradSink<B::InnerBackend>,
}

impl<B: GradProbe> Default for AnomalyProbes<B> {
    fn default() -> Self {
        AnomalyProbes {
            sink: GradSink::default(),
        }
    }
}

impl<B: GradProbe> Observer<B> for AnomalyProbes<B> {
    fn wants(&self, _site: Site) -> bool {
        false
    }

    fn observe(&mut self, _site: Site, _tensor: &Tensor<B, 2>) {}

    fn transform(&mut self, site: Site, tensor: Tensor<B, 2>) -> Tensor<B, 2> {
        B::probe(tensor, site, &self.sink)
    }
}

/// Both a forward observer (the stability monitor) and the gradient probes.
pub struct WatchBoth<'a, B: GradProbe> {
    /// Sees the forward activations.
    pub forward: &'a mut dyn Observer<B>,
    /// Probes the backward pass.
    pub probes: &'a mut AnomalyProbes<B>,
}

impl<B: GradProbe> Observer<B> for WatchBoth<'_, B> {
    fn wants(&self, site: Site) -> bool {
        self.forward.wants(site)
    }

    fn observe(&mut self, site: Site, tensor: &Tensor<B, 2>) {
        self.forward.observe(site, tensor);
    }

    fn transform(&mut self, site: Site, tensor: Tensor<B, 2>) -> Tensor<B, 2> {
        self.probes.transform(site, tensor)
    }
}

/// The first site in backward order whose gradient held an inf or NaN, with the largest
/// finite |g| seen at the sites before it (and where).
pub fn first_nonfinite(stats: &[GradStats]) -> Option<(GradStats, f32, Option<Site>)> {
    let i = stats.iter().position(|s| !s.is_finite())?;
    let before = stats[..i]
        .iter()
        .max_by(|a, b| a.peak_abs.total_cmp(&b.peak_abs));
    Some((
        stats[i].clone(),
        before.map_or(0.0, |b| b.peak_abs),
        before.map(|b| b.site),
    ))
}
