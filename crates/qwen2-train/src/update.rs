//! The optimizer half of a step: the gradients' finiteness and global norm, then AdamW on
//! every trained tensor, through the backend's one-pass [`OptimizerKernel`] where it has one
//! and burn's ops otherwise (the same values either way).

use std::sync::Arc;

use burn::prelude::{Backend, Tensor};
use burn::tensor::backend::AutodiffBackend;
use qwen2_core::model::{Qwen2Model, WeightMut};
use qwen2_core::train_kernels::{AdamWScalars, OptimizerKernel};

use crate::optim::{finite_and_norm, AdamWConfig, Moments};
use crate::trainer::{is_trained, Grads, Params};

/// The optimizer kernel of a run, if its backend has one.
pub(crate) type OptimKernel<B> =
    Option<Arc<dyn OptimizerKernel<<B as AutodiffBackend>::InnerBackend>>>;

impl AdamWConfig {
    /// The constants of the update at 1-based step `t`, rounded to f32 as burn's scalar ops
    /// round them, with the loss scale's inverse and the clipping factor applied first.
    pub fn scalars(
        &self,
        lr: f64,
        t: usize,
        unscale: Option<f64>,
        clip: Option<f64>,
    ) -> AdamWScalars {
        let bias1 = 1.0 - self.beta1.powi(t as i32);
        let bias2 = 1.0 - self.beta2.powi(t as i32);
        AdamWScalars {
            unscale: unscale.map(|u| u as f32),
            clip: clip.map(|c| c as f32),
            decay: (self.weight_decay != 0.0).then_some((1.0 - lr * self.weight_decay) as f32),
            one_minus_beta1: (1.0 - self.beta1) as f32,
            beta2: self.beta2 as f32,
            one_minus_beta2: (1.0 - self.beta2) as f32,
            bias2_sqrt: bias2.sqrt() as f32,
            eps: self.eps as f32,
            step_size: (lr / bias1) as f32,
        }
    }
}

/// Whether every gradient (times `unscale`) is finite, their global L2 norm as
/// `clip_grad_norm_` computes it (the norm of the per-tensor norms, in f32), and the unscaling
/// still to apply: the kernel reads the gradients scaled and leaves them so (the update
/// unscales them in its pass); without one they are unscaled here, in place.
pub(crate) fn grad_stats<B: Backend>(
    kernel: Option<&dyn OptimizerKernel<B>>,
    grads: &mut [Option<Tensor<B, 1>>],
    unscale: Option<f64>,
) -> (bool, f64, Option<f64>) {
    if let Some(k) = kernel {
        let stats: Option<Vec<(bool, f32)>> = grads
            .iter()
            .flatten()
            .map(|g| k.finite_and_sum_squares(g, unscale.map(|u| u as f32)))
            .collect();
        if let Some(stats) = stats {
            let finite = stats.iter().all(|s| s.0);
            let total = stats
                .iter()
                .map(|s| {
                    let norm = s.1.sqrt();
                    norm * norm
                })
                .sum::<f32>()
                .sqrt();
            return (finite, total as f64, unscale);
        }
    }
    if let Some(inv) = unscale {
        for g in grads.iter_mut().flatten() {
            *g = g.clone() * inv;
        }
    }
    let present: Vec<Tensor<B, 1>> = grads.iter().flatten().cloned().collect();
    let (finite, norm) = finite_and_norm(&present);
    (finite, norm, None)
}

/// Applies AdamW at 1-based step `t` to every trained tensor of `model` with its gradient in
/// `grads` (taken), clipped by `clip`; `unscale` is what [`grad_stats`] left to apply.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_adamw<B: AutodiffBackend>(
    model: &mut Qwen2Model<B>,
    params: &mut Params<B>,
    grads: &mut Grads<B>,
    kernel: Option<&dyn OptimizerKernel<B::InnerBackend>>,
    adamw: &AdamWConfig,
    full: bool,
    (lr, t): (f64, usize),
    unscale: Option<f64>,
    clip: Option<f64>,
) {
    let scalars = adamw.scalars(lr, t, unscale, clip);
    let mut i = 0;
    model.visit_weights(&mut |name, kind, w| {
        if !is_trained(kind, full) {
            return;
        }
        debug_assert_eq!(params[i].0, name);
        if let Some(g) = grads[i].take() {
            let state = &mut params[i].1;
            match w {
                WeightMut::Vector(w) => {
                    let p = take(w).inner();
                    let p = update(kernel, adamw, &scalars, p, g, state, lr, t);
                    *w = Tensor::from_inner(p).require_grad();
                }
                WeightMut::Matrix(w) => {
                    let shape = w.shape();
                    let p = take(w).inner().flatten::<1>(0, 1);
                    let p = update(kernel, adamw, &scalars, p, g, state, lr, t);
                    *w = Tensor::from_inner(p.reshape(shape)).require_grad();
                }
            }
        }
        i += 1;
    });
}

/// Moves the weight out of its slot (leaving an empty tensor) so a kernel can own its storage.
fn take<B: Backend, const D: usize>(slot: &mut Tensor<B, D>) -> Tensor<B, D> {
    let device = slot.device();
    std::mem::replace(slot, Tensor::empty([0; D], &device))
}

/// One tensor's update: the kernel's in place, or the generic one on (unscaled, clipped) `g`.
#[allow(clippy::too_many_arguments)]
fn update<B: Backend>(
    kernel: Option<&dyn OptimizerKernel<B>>,
    adamw: &AdamWConfig,
    scalars: &AdamWScalars,
    mut p: Tensor<B, 1>,
    g: Tensor<B, 1>,
    state: &mut Moments<B>,
    lr: f64,
    t: usize,
) -> Tensor<B, 1> {
    if let Some(k) = kernel {
        if k.adamw(&mut p, &g, &mut state.m, &mut state.v, scalars) {
            return p;
        }
    }
    let g = match scalars.unscale {
        Some(u) => g * u as f64,
        None => g,
    };
    let g = match scalars.clip {
        Some(c) => g * c as f64,
        None => g,
    };
    adamw.update(p, g, state, lr, t)
}
