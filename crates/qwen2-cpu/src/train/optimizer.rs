//! AdamW and the gradient statistics in one pass each, in place, on the pool's threads.
//!
//! The generic trainer runs AdamW as about ten burn ops, each a pass over the parameter and a
//! fresh tensor of its size (2 GB for the 0.5B model's embedding); here the parameter, both
//! moments and the gradient are read once and the first three written in place. The arithmetic
//! is the generic code's, op for op in f32, so the results are the same bits.

use burn::prelude::Tensor;
use burn::tensor::{DType, TensorPrimitive};
use burn_flex::{Flex, FlexDevice, FlexTensor};
use qwen2_core::train_kernels::{AdamWScalars, OptimizerKernel};
use rayon::prelude::*;

/// Values per task: large enough that scheduling costs nothing, small enough to balance.
const CHUNK: usize = 1 << 16;

/// The CPU's [`OptimizerKernel`].
pub struct CpuOptimizer;

/// The tensor's f32 primitive, contiguous from offset 0 over its whole buffer (a copy only when
/// it is a view), or `None` when it is not f32.
fn dense_f32(t: Tensor<Flex, 1>) -> Option<FlexTensor> {
    let p = t.into_primitive().tensor();
    if p.dtype() != DType::F32 {
        return None;
    }
    Some(p.to_contiguous())
}

/// Takes the tensor out of `slot`, leaving an empty one, so its storage can be unique.
fn take(slot: &mut Tensor<Flex, 1>) -> Tensor<Flex, 1> {
    std::mem::replace(slot, Tensor::empty([0], &FlexDevice))
}

fn put(slot: &mut Tensor<Flex, 1>, t: FlexTensor) {
    *slot = Tensor::from_primitive(TensorPrimitive::Float(t));
}

impl OptimizerKernel<Flex> for CpuOptimizer {
    fn finite_and_sum_squares(
        &self,
        grad: &Tensor<Flex, 1>,
        unscale: Option<f32>,
    ) -> Option<(bool, f32)> {
        let g = dense_f32(grad.clone())?;
        let g = g.storage::<f32>();
        let (finite, sum) = g
            .par_chunks(CHUNK)
            .map(|c| {
                let mut acc = [0f32; 16];
                let mut bad = false;
                let mut lanes = c.chunks_exact(16);
                for l in &mut lanes {
                    for (a, &x) in acc.iter_mut().zip(l) {
                        let x = match unscale {
                            Some(u) => x * u,
                            None => x,
                        };
                        bad |= !x.is_finite();
                        *a += x * x;
                    }
                }
                let mut tail = 0f32;
                for &x in lanes.remainder() {
                    let x = match unscale {
                        Some(u) => x * u,
                        None => x,
                    };
                    bad |= !x.is_finite();
                    tail += x * x;
                }
                (!bad, acc.iter().sum::<f32>() + tail)
            })
            .reduce(|| (true, 0.0), |a, b| (a.0 && b.0, a.1 + b.1));
        Some((finite, sum))
    }

    fn adamw(
        &self,
        param: &mut Tensor<Flex, 1>,
        grad: &Tensor<Flex, 1>,
        m: &mut Tensor<Flex, 1>,
        v: &mut Tensor<Flex, 1>,
        s: &AdamWScalars,
    ) -> bool {
        let all_f32 = [param.dtype(), grad.dtype(), m.dtype(), v.dtype()]
            .iter()
            .all(|d| *d == DType::F32);
        let n = param.dims()[0];
        if !all_f32 || grad.dims()[0] != n || m.dims()[0] != n || v.dims()[0] != n {
            return false;
        }
        let (Some(mut p), Some(g), Some(mut mt), Some(mut vt)) = (
            dense_f32(take(param)),
            dense_f32(grad.clone()),
            dense_f32(take(m)),
            dense_f32(take(v)),
        ) else {
            unreachable!("dtypes checked above")
        };
        {
            // `storage_mut` copies a buffer that something else still shares: same result.
            let ps = p.storage_mut::<f32>();
            let ms = mt.storage_mut::<f32>();
            let vs = vt.storage_mut::<f32>();
            let gs = g.storage::<f32>();
            ps.par_chunks_mut(CHUNK)
                .zip(ms.par_chunks_mut(CHUNK))
                .zip(vs.par_chunks_mut(CHUNK))
                .zip(gs.par_chunks(CHUNK))
                .for_each(|(((p, m), v), g)| adamw_chunk(p, m, v, g, s));
        }
        put(param, p);
        put(m, mt);
        put(v, vt);
        true
    }
}

/// [`AdamWScalars`]' formulas over one chunk, rounded op by op as burn's f32 ops round them.
fn adamw_chunk(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &AdamWScalars) {
    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        let g = match s.unscale {
            Some(u) => g * u,
            None => g,
        };
        let g = match s.clip {
            Some(c) => g * c,
            None => g,
        };
        let w = match s.decay {
            Some(d) => *p * d,
            None => *p,
        };
        let m1 = *m + (g - *m) * s.one_minus_beta1;
        let v1 = *v * s.beta2 + g * g * s.one_minus_beta2;
        let denom = v1.sqrt() / s.bias2_sqrt + s.eps;
        *p = w - (m1 / denom) * s.step_size;
        *m = m1;
        *v = v1;
    }
}
