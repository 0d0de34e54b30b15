//! SwiGLU and the summed cross-entropy of a training step as autodiff ops of one pass each.
//!
//! - SwiGLU: the generic graph computes `silu` as `x · sigmoid(x)`, four nodes and a fresh
//!   `[rows, intermediate]` tensor each way; here the forward is the inference kernel's pass
//!   (rounded as the graph rounds) and the backward one pass in f32,
//!   `d_up = dy · silu(g)`, `d_gate = dy · u · σ(g) · (1 + g · (1 − σ(g)))`.
//! - Cross-entropy: `−Σ log_softmax(logits)[target]` over `[n, vocab]` f32 logits, which the
//!   graph runs as max, subtract, exp, sum, log, subtract and gather, each a pass over the
//!   logits and a tensor of their size (155 MB for 255 tokens of Qwen2's vocabulary); here one
//!   pass per row for the forward and one for the backward, `dlogits = g · (softmax − onehot)`.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::prelude::Tensor;
use burn::tensor::{FloatDType, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::inner;
use crate::fused::{exp_nonpositive, sigmoid, swiglu_slice};
use crate::host::{from_f32, to_f32, Round};

type Ad = Autodiff<Flex>;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

fn primitive(t: Tensor<Flex, 2>) -> FlexTensor {
    t.into_primitive().tensor()
}

/// What SwiGLU's backward reads: the operands (as their dtype holds them) and their dtype.
struct SwigluSaved {
    gate: Vec<f32>,
    up: Vec<f32>,
    shape: [usize; 2],
    dtype: FloatDType,
}

impl std::fmt::Debug for SwigluSaved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SwigluSaved({:?})", self.shape)
    }
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    type State = Arc<SwigluSaved>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_gate, node_up] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let mut d_gate = to_f32(&Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(
            dy,
        )));
        let mut d_up = vec![0f32; d_gate.len()];
        let round = Round::of(s.dtype).unwrap_or(Round::F32);
        d_gate
            .par_chunks_mut(CHUNK)
            .zip(d_up.par_chunks_mut(CHUNK))
            .zip(s.gate.par_chunks(CHUNK).zip(s.up.par_chunks(CHUNK)))
            .for_each(|((dg, du), (g, u))| {
                for i in 0..dg.len() {
                    let sig = sigmoid(g[i]);
                    let dy = dg[i];
                    du[i] = dy * round.apply(g[i] * round.apply(sig));
                    dg[i] = dy * u[i] * sig * (1.0 + g[i] * (1.0 - sig));
                }
            });
        if let Some(node) = node_gate {
            grads.register::<Flex>(node.id, primitive(from_f32(d_gate, s.shape, s.dtype)));
        }
        if let Some(node) = node_up {
            grads.register::<Flex>(node.id, primitive(from_f32(d_up, s.shape, s.dtype)));
        }
    }
}

/// Whether [`swiglu`] takes operands of `dtype`.
pub fn swiglu_supported(dtype: FloatDType) -> bool {
    matches!(dtype, FloatDType::F32 | FloatDType::BF16)
}

/// `silu(gate) · up`, `[rows, intermediate]` in one dtype → the same (see the module doc).
pub fn swiglu(gate: &Tensor<Ad, 2>, up: &Tensor<Ad, 2>) -> Tensor<Ad, 2> {
    let shape = gate.dims();
    let dtype: FloatDType = gate.dtype().into();
    let round = Round::of(dtype).expect("swiglu_supported dtypes");
    let (g, u) = (to_f32(&inner(gate)), to_f32(&inner(up)));
    let mut y = g.clone();
    y.par_chunks_mut(CHUNK)
        .zip(u.par_chunks(CHUNK))
        .for_each(|(y, u)| swiglu_slice(y, u, round));
    let y = primitive(from_f32(y, shape, dtype));
    let nodes = [gate, up].map(|t| t.clone().into_primitive().tensor().node);
    let out = match SwigluBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            Arc::new(SwigluSaved {
                gate: g,
                up: u,
                shape,
                dtype,
            }),
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// What the cross-entropy's backward reads.
struct CrossEntropySaved {
    logits: FlexTensor,
    targets: Vec<u32>,
    /// Per row: max logit and log Σ exp(logit − max).
    max: Vec<f32>,
    log_sum: Vec<f32>,
}

impl std::fmt::Debug for CrossEntropySaved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CrossEntropySaved({} rows)", self.targets.len())
    }
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl Backward<Flex, 1> for CrossEntropyBackward {
    type State = Arc<CrossEntropySaved>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dloss = grads.consume::<Flex>(&ops.node);
        let Some(node) = node else { return };
        let g = to_f32(&Tensor::<Flex, 1>::from_primitive(TensorPrimitive::Float(
            dloss,
        )))[0];
        let s = ops.state;
        let logits = s.logits.storage::<f32>();
        let vocab = logits.len() / s.targets.len().max(1);
        let mut d = vec![0f32; logits.len()];
        d.par_chunks_mut(vocab)
            .zip(logits.par_chunks(vocab))
            .enumerate()
            .for_each(|(r, (d, x))| {
                let shift = s.max[r] + s.log_sum[r];
                for (d, &x) in d.iter_mut().zip(x) {
                    *d = g * exp_nonpositive(x - shift);
                }
                d[s.targets[r] as usize] -= g;
            });
        let shape = s.logits.layout().shape().clone();
        let d = FlexTensor::from_data(TensorData::new(d, shape));
        grads.register::<Flex>(node.id, d);
    }
}

/// `Σ exp(x − max)` over a row, in sixteen lanes (vectorized; a shorter chain of roundings
/// than one running sum).
fn sum_exp(row: &[f32], max: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut lanes = row.chunks_exact(16);
    for l in &mut lanes {
        for (a, &x) in acc.iter_mut().zip(l) {
            *a += exp_nonpositive(x - max);
        }
    }
    let tail: f32 = lanes
        .remainder()
        .iter()
        .map(|&x| exp_nonpositive(x - max))
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// `−Σ_r log_softmax(logits[r])[targets[r]]`: `logits` `[n, vocab]` f32, one target per row →
/// `[1]` f32; `None` for other dtypes or a target outside the vocabulary.
pub fn cross_entropy_sum(logits: &Tensor<Ad, 2>, targets: &[u32]) -> Option<Tensor<Ad, 1>> {
    let [n, vocab] = logits.dims();
    if logits.dtype() != burn::tensor::DType::F32
        || n != targets.len()
        || targets.iter().any(|&t| t as usize >= vocab)
    {
        return None;
    }
    let held = primitive(inner(logits)).to_contiguous();
    let x = held.storage::<f32>();
    let rows: Vec<(f32, f32, f32)> = x
        .par_chunks(vocab.max(1))
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let log_sum = sum_exp(row, max).ln();
            (max, log_sum, row[t as usize] - max - log_sum)
        })
        .collect();
    let loss = -rows.iter().map(|r| r.2).sum::<f32>();
    let y = FlexTensor::from_data(TensorData::new(vec![loss], [1]));
    let node = logits.clone().into_primitive().tensor().node;
    let out = match CrossEntropyBackward
        .prepare::<NoCheckpointing>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            Arc::new(CrossEntropySaved {
                logits: held,
                targets: targets.to_vec(),
                max: rows.iter().map(|r| r.0).collect(),
                log_sum: rows.iter().map(|r| r.1).collect(),
            }),
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
}
