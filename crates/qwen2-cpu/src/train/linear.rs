//! The projections of a training run as one autodiff op each, on the CPU's kernels.
//!
//! Forward: `y = x · W` (`W` the `[in, out]` view of HF's `[out, in]` weight), f32
//! accumulation, rounded to the compute dtype: bf16 on [`CpuMatmul`] (the `vdpbf16ps` tiles),
//! f32 on the `gemm` crate (burn-flex's product, its AVX-512 kernels where the CPU has them).
//! Backward, with `dY` `[m, out]` in the compute dtype:
//! - `dX = dY · Wᵀ` `[m, in]`: bf16 on the tiles over `W` transposed once (kept for frozen
//!   weights, which never change, and rebuilt per step for trained ones); f32 on the `gemm`
//!   crate over `W`'s own memory;
//! - `dW = dYᵀ · X`, computed as HF's `[out, in]` so the trainer's flatten is free; only when
//!   the weight is trained.
//!
//! The bias is left to the graph (`+ b`, rounded as the generic graph rounds it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::prelude::Tensor;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{DType, FloatDType, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use qwen2_core::model::MatmulKernel;

use rayon::prelude::*;

use crate::host::round_bf16;
use crate::matmul::CpuMatmul;

type Ad = Autodiff<Flex>;

/// The CPU's [`MatmulKernel`] for `Autodiff<Flex>`.
#[derive(Default, Clone)]
pub struct TrainMatmul {
    /// Frozen bf16 weights transposed for `dX` on the tiles, by their storage address; each
    /// entry holds the weight's storage too, so the address cannot be reused while it lives.
    transposed: Arc<Mutex<HashMap<usize, (FlexTensor, FlexTensor)>>>,
}

fn flex<const D: usize>(p: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// `x` `[m, k]` × `w` `[k, n]` (a view over `[n, k]` memory) in `compute` on the kernels that
/// serve it best (see the module doc).
fn product(x: &FlexTensor, w: &FlexTensor, compute: FloatDType) -> Option<FlexTensor> {
    if compute == FloatDType::F32 {
        return Some(Flex::float_matmul(x.clone(), w.clone()));
    }
    // Gradients reach here as strided views (the attention's head split); the kernels read
    // rows in place, so one copy in the operand's own dtype, not a widening one.
    let x = x.to_contiguous();
    let y = CpuMatmul.matmul(&flex(x), &flex(w.clone()), None, compute)?;
    Some(y.into_primitive().tensor())
}

impl TrainMatmul {
    /// `dX = dY · Wᵀ` for `w` the forward's `[in, out]` view.
    fn grad_input(&self, dy: &FlexTensor, w: &FlexTensor, frozen: bool) -> FlexTensor {
        if w.dtype() == DType::BF16 {
            // The tiles read weight rows along the product's inner dimension (`out` here): `W`
            // transposed, `[in, out]` row-major, which is `w` made contiguous.
            let wt = if frozen {
                self.frozen_transposed(w)
            } else {
                w.to_contiguous()
            };
            let view = wt.transpose(0, 1);
            if let Some(dx) = product(dy, &view, FloatDType::BF16) {
                return dx;
            }
        }
        Flex::float_matmul(dy.clone(), w.transpose(0, 1))
    }

    fn frozen_transposed(&self, w: &FlexTensor) -> FlexTensor {
        let key = w.bytes().as_ptr() as usize;
        let mut cache = self.transposed.lock().expect("transposed weights");
        cache
            .entry(key)
            .or_insert_with(|| (w.clone(), w.to_contiguous()))
            .1
            .clone()
    }
}

/// The backward of `y = x · W`.
#[derive(Debug)]
struct LinearBackward {
    kernel: TrainMatmul,
}

impl std::fmt::Debug for TrainMatmul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrainMatmul")
    }
}

/// What the backward keeps: `x` (for `dW`, when the weight is trained), `w` (for `dX`, when
/// the input is), and whether `w` is frozen.
#[derive(Debug, Clone)]
struct LinearState {
    x: Option<FlexTensor>,
    w: Option<FlexTensor>,
    frozen: bool,
    /// The weight is an f32 master cast to bf16 inside the op: its gradient is rounded to
    /// bf16 (the value the graph's cast would pass back) and handed over in f32.
    master: bool,
}

impl Backward<Flex, 2> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let state = ops.state;
        if let (Some(node), Some(w)) = (node_x, &state.w) {
            let dx = self.kernel.grad_input(&dy, w, state.frozen);
            grads.register::<Flex>(node.id, dx);
        }
        if let (Some(node), Some(x)) = (node_w, state.x) {
            // dW in HF's [out, in] layout, handed over as the [in, out] view the op took. Half
            // operands are widened first: burn-flex's half-precision product widens them per
            // packed block, several times over (a bf16 full fine-tune spent half its step there).
            let dtype = dy.dtype();
            let dw = if dtype == DType::F32 {
                Flex::float_matmul(dy.transpose(0, 1), x)
            } else {
                let f32 = FloatDType::F32;
                let widen = |t: FlexTensor| Flex::float_cast(t, f32);
                let mut dw = Flex::float_matmul(widen(dy.transpose(0, 1)), widen(x));
                if state.master {
                    let values = dw.storage_mut::<f32>();
                    values.par_chunks_mut(1 << 15).for_each(|c| {
                        c.iter_mut().for_each(|v| *v = round_bf16(*v));
                    });
                    dw
                } else {
                    Flex::float_cast(dw, dtype.into())
                }
            };
            grads.register::<Flex>(node.id, dw.transpose(0, 1));
        }
    }
}

impl MatmulKernel<Ad> for TrainMatmul {
    fn matmul(
        &self,
        x: &Tensor<Ad, 2>,
        weight: &Tensor<Ad, 2>,
        bias: Option<&Tensor<Ad, 1>>,
        compute: FloatDType,
    ) -> Option<Tensor<Ad, 2>> {
        let dtype: DType = compute.into();
        // An f32 master weight in a bf16 product (full fine-tuning in bf16) is cast here, in
        // HF's [out, in] layout, so the tiles read it and its gradient skips the cast node.
        let master = compute == FloatDType::BF16 && weight.dtype() == DType::F32;
        if !matches!(compute, FloatDType::F32 | FloatDType::BF16)
            || x.dtype() != dtype
            || (weight.dtype() != dtype && !master)
        {
            return None;
        }
        let (xa, wa) = (
            x.clone().into_primitive().tensor(),
            weight.clone().into_primitive().tensor(),
        );
        let w = if master {
            Flex::float_cast(wa.primitive.transpose(0, 1), compute).transpose(0, 1)
        } else {
            wa.primitive.clone()
        };
        let y = product(&xa.primitive, &w, compute)?;
        let (x_tracked, w_tracked) = (xa.is_tracked(), wa.is_tracked());
        let op = LinearBackward {
            kernel: self.clone(),
        };
        let out = match op
            .prepare::<NoCheckpointing>([xa.node.clone(), wa.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                LinearState {
                    x: w_tracked.then(|| xa.primitive.clone()),
                    w: x_tracked.then(|| w.clone()),
                    // A cast master is a new tensor each step: never cached.
                    frozen: !w_tracked && !master,
                    master,
                },
                y,
            ),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        let y = Tensor::<Ad, 2>::from_primitive(TensorPrimitive::Float(out));
        Some(match bias {
            Some(b) => y + b.clone().cast(compute).unsqueeze_dim(0),
            None => y,
        })
    }

    fn matmul_quantized(
        &self,
        x: &Tensor<Ad, 2>,
        weight: &qwen2_quant::QuantMatrix,
        bias: Option<&Tensor<Ad, 1>>,
        compute: FloatDType,
    ) -> Option<Tensor<Ad, 2>> {
        super::quantized::matmul_quantized(x, weight, bias, compute)
    }
}
