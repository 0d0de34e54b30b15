//! RMSNorm of a training run as one autodiff op (the generic graph: a cast, square, mean, add,
//! sqrt, reciprocal, two products and two more casts, each a node with a tensor of its own).
//!
//! Forward per row, as the graph rounds it: `r = 1 / sqrt(mean(x²) + eps)` in f32,
//! `n = round(x · r)`, `y = round(n · round(w))` in the output dtype. Backward in f32 with `x̂ =
//! x · r`: `dw = Σ_rows dy · n`, `dx = r · (dy·w − x̂ · mean(dy·w · x̂))`, each rounded to its
//! input's dtype.

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
use crate::host::{from_f32, to_f32, Round};

type Ad = Autodiff<Flex>;

/// What the backward reads.
struct NormSaved {
    /// The input as f32, `[rows, hidden]`.
    x: Vec<f32>,
    /// `1 / sqrt(mean(x²) + eps)` per row.
    r: Vec<f32>,
    /// The weight as the output dtype holds it, `[hidden]`.
    w: Vec<f32>,
    out: Round,
    shape: [usize; 2],
    x_dtype: FloatDType,
    w_dtype: FloatDType,
}

impl std::fmt::Debug for NormSaved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NormSaved({:?})", self.shape)
    }
}

#[derive(Debug)]
struct NormBackward;

impl Backward<Flex, 2> for NormBackward {
    type State = Arc<NormSaved>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let dy = to_f32(&Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(
            dy,
        )));
        let hidden = s.shape[1].max(1);
        if let Some(node) = node_w {
            // Σ over rows of dy · n, n rounded as the forward rounded it.
            let dw = dy
                .par_chunks(hidden * 64)
                .zip(s.x.par_chunks(hidden * 64))
                .enumerate()
                .map(|(block, (dy, x))| {
                    let mut acc = vec![0f32; hidden];
                    for (i, (dy, x)) in dy.chunks(hidden).zip(x.chunks(hidden)).enumerate() {
                        let r = s.r[block * 64 + i];
                        for j in 0..hidden {
                            acc[j] += dy[j] * s.out.apply(x[j] * r);
                        }
                    }
                    acc
                })
                .reduce(
                    || vec![0f32; hidden],
                    |mut a, b| {
                        a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                        a
                    },
                );
            let dw =
                Tensor::<Flex, 1>::from_data(TensorData::new(dw, [hidden]), &Default::default())
                    .cast(s.w_dtype);
            grads.register::<Flex>(node.id, dw.into_primitive().tensor());
        }
        if let Some(node) = node_x {
            let mut dx = vec![0f32; dy.len()];
            dx.par_chunks_mut(hidden)
                .zip(dy.par_chunks(hidden).zip(s.x.par_chunks(hidden)))
                .enumerate()
                .for_each(|(i, (dx, (dy, x)))| {
                    let r = s.r[i];
                    let mut dot = 0f32;
                    for j in 0..hidden {
                        dot += dy[j] * s.w[j] * x[j] * r;
                    }
                    let mean = dot / hidden as f32;
                    for j in 0..hidden {
                        dx[j] = r * (dy[j] * s.w[j] - x[j] * r * mean);
                    }
                });
            let dx: FlexTensor = from_f32(dx, s.shape, s.x_dtype).into_primitive().tensor();
            grads.register::<Flex>(node.id, dx);
        }
    }
}

/// See `qwen2_core::model::FusedKernels::rms_norm`; statistics in f32 only.
pub fn rms_norm(
    x: &Tensor<Ad, 2>,
    weight: &Tensor<Ad, 1>,
    eps: f64,
    norm: FloatDType,
    out: FloatDType,
) -> Option<Tensor<Ad, 2>> {
    let shape = x.dims();
    let hidden = shape[1];
    let round = Round::of(out)?;
    if norm != FloatDType::F32 || weight.dims() != [hidden] || hidden == 0 {
        return None;
    }
    let xs = to_f32(&inner(x));
    let w: Vec<f32> = to_f32(&inner(weight))
        .iter()
        .map(|&v| round.apply(v))
        .collect();
    let eps = eps as f32;
    let r: Vec<f32> = xs
        .par_chunks(hidden)
        .map(|row| {
            let sq: f32 = row.iter().map(|v| v * v).sum();
            1.0 / (sq / hidden as f32 + eps).sqrt()
        })
        .collect();
    let mut y = vec![0f32; xs.len()];
    y.par_chunks_mut(hidden)
        .zip(xs.par_chunks(hidden))
        .zip(r.par_iter())
        .for_each(|((y, x), &r)| {
            for j in 0..hidden {
                y[j] = round.apply(round.apply(x[j] * r) * w[j]);
            }
        });
    let y = from_f32(y, shape, out).into_primitive().tensor();
    let nodes = [
        x.clone().into_primitive().tensor().node,
        weight.clone().into_primitive().tensor().node,
    ];
    let result = match NormBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            Arc::new(NormSaved {
                x: xs,
                r,
                w,
                out: round,
                shape,
                x_dtype: x.dtype().into(),
                w_dtype: weight.dtype().into(),
            }),
            y,
        ),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive(TensorPrimitive::Float(result)))
}
