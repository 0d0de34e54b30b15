//! One-row matrix products (`[1, in] × [in, out]`) for decode steps on the CPU.
//!
//! A decode step reads every weight once, so its speed is memory bandwidth. The generic gemm
//! behind burn-flex's matmul reaches about half of the machine's bandwidth at one row; these
//! loops stream each weight matrix once, split across the rayon pool, with f32 accumulation
//! (bf16 weights are widened in registers, which is exact).

use std::sync::Arc;

use burn::prelude::Tensor;
use burn::tensor::{DType, FloatDType};
use burn_flex::{Flex, FlexTensor};
use half::bf16;
use qwen2_core::model::MatmulKernel;
use qwen2_quant::QuantMatrix;
use rayon::prelude::*;

use crate::gemm::Lanes;

/// The CPU's [`MatmulKernel`]: one-row products with f32 or bf16 weights, stored `[in, out]`
/// or as the transposed view of an `[out, in]` matrix (the tied lm_head).
pub struct CpuGemv;

/// A kernel for [`qwen2_core::Platform::matmul_kernel`].
pub fn kernel() -> Arc<dyn MatmulKernel<Flex>> {
    Arc::new(CpuGemv)
}

/// Weight elements the kernels can read.
pub(crate) trait Weight: Copy + Send + Sync + bytemuck::Pod + burn::tensor::Element {
    fn f32(self) -> f32;
}

impl Weight for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}

impl Weight for bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

impl MatmulKernel<Flex> for CpuGemv {
    fn matmul(
        &self,
        x: &Tensor<Flex, 2>,
        weight: &Tensor<Flex, 2>,
        compute: FloatDType,
    ) -> Option<Tensor<Flex, 2>> {
        let [m, k] = x.dims();
        let [k_w, n] = weight.dims();
        let w: FlexTensor = weight.clone().into_primitive().tensor();
        // The weight must already be in the compute dtype (no per-call conversion).
        let wanted = match compute {
            FloatDType::F32 => DType::F32,
            FloatDType::BF16 => DType::BF16,
            _ => return None,
        };
        if k != k_w || w.dtype() != wanted {
            return None;
        }
        let layout = w.layout();
        let (rs, cs, off) = (
            layout.strides()[0],
            layout.strides()[1],
            layout.start_offset(),
        );
        // `[in, out]` rows (axpy form) or the transposed view of `[out, in]` (dot form).
        let rows_in = cs == 1 && rs == n as isize;
        let rows_out = rs == 1 && cs == k as isize;
        let xs = crate::host::to_f32(x);
        let y = match (w.dtype(), m, rows_in, rows_out) {
            // Many rows (prefill): the register-blocked kernel of `crate::gemm`.
            (DType::F32, 2.., _, true) => {
                crate::gemm::matmul_rows(&xs, m, k, &w.storage::<f32>()[off..], n)
            }
            (_, 2.., _, true) => {
                crate::gemm::matmul_rows(&xs, m, k, &w.storage::<bf16>()[off..], n)
            }
            (_, 2.., _, _) => return None,
            (DType::F32, _, true, _) => axpy_rows(&xs, &w.storage::<f32>()[off..], n),
            (DType::F32, _, _, true) => dot_rows(&xs, &w.storage::<f32>()[off..], k, n),
            (_, _, true, _) => axpy_rows(&xs, &w.storage::<bf16>()[off..], n),
            (_, _, _, true) => dot_rows(&xs, &w.storage::<bf16>()[off..], k, n),
            _ => return None,
        };
        Some(crate::host::from_f32(y, [m, n], compute))
    }

    /// Quantized weights: the rows read without a copy through burn (f32 storage is borrowed
    /// as is), quantized per block to 8 bits, multiplied by qwen2-quant's kernels for this CPU
    /// (AVX-512 VNNI, AVX2 or portable; `QWEN2_QUANT_PATH` forces one).
    fn matmul_quantized(
        &self,
        x: &Tensor<Flex, 2>,
        weight: &QuantMatrix,
        compute: FloatDType,
    ) -> Option<Tensor<Flex, 2>> {
        let [m, k] = x.dims();
        if k != weight.cols() {
            return None;
        }
        let xs = crate::host::to_f32(x);
        // Many rows (prefill): weight rows dequantized to bf16 tile by tile and multiplied
        // with AVX512-BF16 where the CPU has it; otherwise (and for decode) integer dots.
        let bf16_tiles = m >= BF16_TILE_MIN_ROWS && bf16_tiles_allowed();
        let y = bf16_tiles
            .then(|| crate::gemm_bf16::matmul_quantized_rows(&xs, m, weight))
            .flatten()
            .unwrap_or_else(|| qwen2_core::model::quantized_rows(&xs, m, weight));
        Some(crate::host::from_f32(y, [m, weight.rows()], compute))
    }
}

/// Rows from which quantized products take the bf16 tiles (dequantizing a weight row costs
/// about as much as a few rows of integer dots).
const BF16_TILE_MIN_ROWS: usize = 16;

/// Set (to anything) to keep many-row quantized products on the integer kernels.
pub const INTEGER_PREFILL_VAR: &str = "QWEN2_QUANT_INTEGER_PREFILL";

/// Whether [`INTEGER_PREFILL_VAR`] leaves many-row quantized products to the bf16 tiles (read
/// once per process).
fn bf16_tiles_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| std::env::var_os(INTEGER_PREFILL_VAR).is_none())
}

/// Columns per task: enough tasks to balance the pool, each a long contiguous run.
fn chunk_len(n: usize) -> usize {
    let tasks = rayon::current_num_threads() * 2;
    n.div_ceil(tasks).next_multiple_of(16).max(64)
}

/// `y[j] = Σ_i x[i] w[i * n + j]`: each task owns a range of columns and streams its part of
/// every row.
fn axpy_rows<W: Weight>(x: &[f32], w: &[W], n: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; n];
    let chunk = chunk_len(n);
    y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
        let j0 = c * chunk;
        for (i, &xi) in x.iter().enumerate() {
            let row = &w[i * n + j0..i * n + j0 + ys.len()];
            axpy(xi, row, ys);
        }
    });
    y
}

#[inline(always)]
fn axpy<W: Weight>(a: f32, row: &[W], ys: &mut [f32]) {
    for (y, &w) in ys.iter_mut().zip(row) {
        *y += a * w.f32();
    }
}

/// `y[j] = Σ_i x[i] w[j * k + i]`: dot products with contiguous rows, each task streaming a
/// contiguous block of rows.
fn dot_rows<W: Lanes>(x: &[f32], w: &[W], k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; n];
    let chunk = chunk_len(n).min(4096);
    let block: fn(&[f32], &[W], usize, &mut [f32], usize) = pick_dot_block::<W>();
    y.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(c, ys)| block(x, w, k, ys, c * chunk));
    y
}

/// The fastest `dot_block` this CPU runs.
fn pick_dot_block<W: Lanes>() -> fn(&[f32], &[W], usize, &mut [f32], usize) {
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx2_fma() {
        return |x, w, k, ys, j0| {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe { crate::gemm::avx2::dot_block(x, w, k, ys, j0) }
        };
    }
    dot_block::<W>
}

/// Portable one-row products: one dot product per weight row.
fn dot_block<W: Weight>(x: &[f32], w: &[W], k: usize, ys: &mut [f32], j0: usize) {
    for (jj, out) in ys.iter_mut().enumerate() {
        let j = j0 + jj;
        *out = crate::gemm::dot(x, &w[j * k..j * k + k]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn max_diff(a: Tensor<Flex, 2>, b: Tensor<Flex, 2>) -> f32 {
        let a = a.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap();
        let b = b.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn one_row_products_equal_burns_matmul() {
        let dev = Default::default();
        for (k, n) in [(64usize, 96usize), (37, 1000), (896, 128), (200, 7)] {
            let x = Tensor::<Flex, 2>::random([1, k], Distribution::Normal(0.0, 1.0), &dev);
            let w = Tensor::<Flex, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev);
            let wt = Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 1.0), &dev);
            // f32, [in, out] and the transposed view of [out, in]: f32 rounding only.
            for weight in [w.clone(), wt.clone().transpose()] {
                let fast = CpuGemv
                    .matmul(&x, &weight, FloatDType::F32)
                    .expect("handled");
                let reference = x.clone().matmul(weight.clone());
                assert!(
                    max_diff(fast, reference) < 1e-4 * (k as f32).sqrt(),
                    "f32 {k}x{n}"
                );
            }
            // bf16 weights and input, f32 accumulation, bf16 result: within bf16 rounding.
            let xb = x.clone().cast(FloatDType::BF16);
            for weight in [w.clone(), wt.clone().transpose()] {
                let wb = weight.cast(FloatDType::BF16);
                let fast = CpuGemv.matmul(&xb, &wb, FloatDType::BF16).expect("handled");
                let reference = xb
                    .clone()
                    .cast(FloatDType::F32)
                    .matmul(wb.clone().cast(FloatDType::F32));
                let scale = reference.clone().abs().max().into_scalar();
                assert!(
                    max_diff(fast, reference) <= scale * 2.0f32.powi(-8),
                    "bf16 {k}x{n}"
                );
            }
        }
    }

    #[test]
    fn many_row_products_equal_burns_matmul() {
        let dev = Default::default();
        for (dtype, steps) in [
            (FloatDType::F32, 2.0f32.powi(-20)),
            (FloatDType::BF16, 2.0f32.powi(-8)),
        ] {
            let x = Tensor::<Flex, 2>::random([5, 40], Distribution::Normal(0.0, 1.0), &dev)
                .cast(dtype);
            let w = Tensor::<Flex, 2>::random([72, 40], Distribution::Normal(0.0, 1.0), &dev)
                .cast(dtype)
                .transpose();
            let fast = CpuGemv.matmul(&x, &w, dtype).expect("handled");
            let reference = x.clone().matmul(w.clone());
            assert_eq!(fast.dims(), [5, 72]);
            assert_eq!(fast.dtype(), reference.dtype());
            // Same arithmetic in another f32 summation order: a few f32 roundings of the
            // largest output, or (bf16) one bf16 rounding step.
            let scale = reference
                .clone()
                .cast(FloatDType::F32)
                .abs()
                .max()
                .into_scalar();
            assert!(max_diff(fast, reference) <= scale * steps, "{dtype:?}");
        }
    }

    #[test]
    fn other_shapes_and_dtypes_are_left_to_burn() {
        let dev = Default::default();
        let x2 = Tensor::<Flex, 2>::random([2, 8], Distribution::Default, &dev);
        let w = Tensor::<Flex, 2>::random([8, 4], Distribution::Default, &dev);
        assert!(
            CpuGemv.matmul(&x2, &w, FloatDType::F32).is_none(),
            "two rows"
        );
        let x1 = Tensor::<Flex, 2>::random([1, 8], Distribution::Default, &dev);
        let wh = w.clone().cast(FloatDType::F16);
        assert!(
            CpuGemv.matmul(&x1, &wh, FloatDType::F32).is_none(),
            "f16 weights"
        );
        assert!(
            CpuGemv.matmul(&x1, &w, FloatDType::F16).is_none(),
            "f16 compute"
        );
    }
}
