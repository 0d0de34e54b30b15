//! A projection over frozen quantized weights (LoRA on a quantized base) as an autodiff op.
//!
//! Forward: the inference kernels over the ggml blocks ([`CpuMatmul::matmul_quantized`]: the
//! bf16 tiles with rows dequantized per task, or the integer kernels). Backward: only `dX = dY ·
//! W` (the weight is frozen), with `W` dequantized a block of rows at a time into a task's
//! buffer and multiplied there: the dense weight is never stored.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::prelude::Tensor;
use burn::tensor::{FloatDType, TensorPrimitive};
use burn_flex::Flex;
use qwen2_core::model::MatmulKernel;
use qwen2_quant::QuantMatrix;
use rayon::prelude::*;

use super::strided::{matmul, View};
use crate::host::{from_f32, to_f32};
use crate::matmul::CpuMatmul;

type Ad = Autodiff<Flex>;

/// Weight rows dequantized per task of the backward.
const ROWS_PER_TASK: usize = 256;

#[derive(Debug, Clone)]
struct QuantState {
    weight: QuantMatrix,
    /// The input's dtype (its gradient's).
    dtype: FloatDType,
}

#[derive(Debug)]
struct QuantBackward;

/// `dY` `[m, out]` (f32) · `W` `[out, in]` → `[m, in]` f32, `W` dequantized per row block.
pub fn grad_input(dy: &[f32], m: usize, w: &QuantMatrix) -> Vec<f32> {
    let (rows, cols) = (w.rows(), w.cols());
    let row_bytes = w.row_bytes();
    let blocks: Vec<usize> = (0..rows).step_by(ROWS_PER_TASK).collect();
    let partial = |r0: usize| {
        let r1 = (r0 + ROWS_PER_TASK).min(rows);
        let mut deq = vec![0f32; (r1 - r0) * cols];
        qwen2_gguf::dequant::dequantize_into(
            w.ggml_type(),
            &w.data()[r0 * row_bytes..r1 * row_bytes],
            &mut deq,
        )
        .expect("a QuantMatrix holds whole blocks of its type");
        (r0, r1, deq)
    };
    let threads = rayon::current_num_threads().max(1);
    // Each thread sums its share of the row blocks into its own [m, in] buffer.
    let per = blocks.len().div_ceil(threads).max(1);
    let sums: Vec<Vec<f32>> = blocks
        .par_chunks(per)
        .map(|share| {
            let mut acc = vec![0f32; m * cols];
            for (i, &r0) in share.iter().enumerate() {
                let (r0, r1, deq) = partial(r0);
                let k = r1 - r0;
                matmul(
                    &mut acc,
                    View::rows(0, m, cols, cols),
                    i > 0,
                    dy,
                    View::rows(r0, m, k, rows),
                    &deq,
                    View::rows(0, k, cols, cols),
                );
            }
            acc
        })
        .collect();
    let mut it = sums.into_iter();
    let mut total = it.next().unwrap_or_else(|| vec![0f32; m * cols]);
    for s in it {
        total.iter_mut().zip(s).for_each(|(a, b)| *a += b);
    }
    total
}

impl Backward<Flex, 1> for QuantBackward {
    type State = QuantState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Some(node) = node else { return };
        let dy = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(dy));
        let m = dy.dims()[0];
        let dx = grad_input(&to_f32(&dy), m, &ops.state.weight);
        let dx = from_f32(dx, [m, ops.state.weight.cols()], ops.state.dtype);
        grads.register::<Flex>(node.id, dx.into_primitive().tensor());
    }
}

/// See `MatmulKernel::matmul_quantized`; the bias is added by the graph.
pub fn matmul_quantized(
    x: &Tensor<Ad, 2>,
    weight: &QuantMatrix,
    bias: Option<&Tensor<Ad, 1>>,
    compute: FloatDType,
) -> Option<Tensor<Ad, 2>> {
    let xa = x.clone().into_primitive().tensor();
    let inner = Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(xa.primitive.clone()));
    let y = CpuMatmul.matmul_quantized(&inner, weight, None, compute)?;
    let y = y.into_primitive().tensor();
    let out = match QuantBackward
        .prepare::<NoCheckpointing>([xa.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            QuantState {
                weight: weight.clone(),
                dtype: x.dtype().into(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use qwen2_quant::{GgmlType, QK_K};

    /// The input gradient through the blocks equals the product with the dequantized matrix
    /// (the same f32 values, summed in other orders: 1e-5 of the largest value).
    #[test]
    fn input_gradient_through_the_blocks_is_the_dequantized_product() {
        for (t, rows, cols) in [
            (GgmlType::Q8_0, 300, 64),
            (GgmlType::Q4_0, 257, 96),
            (GgmlType::Q4_K, 513, QK_K),
        ] {
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
                .collect();
            let q = QuantMatrix::from_f32(t, rows, cols, &w).unwrap();
            let mut deq = vec![0f32; rows * cols];
            qwen2_gguf::dequant::dequantize_into(t, q.data(), &mut deq).unwrap();
            let m = 7;
            let dy: Vec<f32> = (0..m * rows)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 16.0)
                .collect();
            let got = grad_input(&dy, m, &q);
            let mut worst = 0f32;
            let mut scale = 0f32;
            for i in 0..m {
                for j in 0..cols {
                    let want: f32 = (0..rows)
                        .map(|o| dy[i * rows + o] * deq[o * cols + j])
                        .sum();
                    worst = worst.max((got[i * cols + j] - want).abs());
                    scale = scale.max(want.abs());
                }
            }
            assert!(
                worst <= 1e-5 * scale.max(1.0),
                "{t:?}: {worst} (scale {scale})"
            );
        }
    }
}
