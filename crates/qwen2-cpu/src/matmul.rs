//! The CPU's [`MatmulKernel`]: which loop serves which product.
//!
//! - Many rows over bf16 weights (prefill in the bf16 plan), or over quantized weights from
//!   [`BF16_TILE_MIN_ROWS`] rows: `crate::gemm_bf16`'s `vdpbf16ps` tiles where the CPU has
//!   AVX512-BF16. They read bf16 activations as they are and store the output dtype with the
//!   bias added (or the MLP's SwiGLU applied) per task, so no f32 copy of the input or the
//!   output is made.
//! - Other many-row products over dense weights: `crate::gemm`'s f32 register blocks.
//! - One row (decode): `crate::gemv`'s loops, bound by memory bandwidth.
//! - Quantized weights otherwise: qwen2-quant's integer kernels.
//!
//! Every route rounds as the graph does: the product to the compute dtype, then `+ bias` and
//! round again; SwiGLU as `crate::fused`'s.

use std::sync::Arc;

use burn::prelude::Tensor;
use burn::tensor::{DType, FloatDType, TensorData};
use burn_flex::{Flex, FlexTensor};
use half::bf16;
use qwen2_core::model::{quantized_rows, MatmulKernel, ProjectionWeight};
use qwen2_quant::QuantMatrix;

use crate::gemm_bf16::{self, Epilogue, Input, Matrix, Output};
use crate::gemv::{axpy_rows, dot_rows};
use crate::host::{for_chunks, from_f32, primitive, to_f32, zip_chunks, Round};

/// Elements per parallel task of the element-wise passes.
const CHUNK: usize = 1 << 15;

/// The CPU's [`MatmulKernel`] (see the module doc).
pub struct CpuMatmul;

/// A kernel for [`qwen2_core::Platform::matmul_kernel`].
pub fn kernel() -> Arc<dyn MatmulKernel<Flex>> {
    Arc::new(CpuMatmul)
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

/// A dense weight's memory as the kernels read it.
enum Dense<'a> {
    /// `[in, out]` rows (`y = Σ x_i · row_i`, the axpy form).
    RowsIn(Weights<'a>),
    /// `[out, in]` rows (the transposed view of HF's layout: dot products).
    RowsOut(Weights<'a>),
}

/// Weight elements.
enum Weights<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

/// `w` (the `[k, n]` view a projection multiplies by) as [`Dense`], if its dtype is `compute`'s
/// and its layout one the loops read.
fn dense(w: &FlexTensor, k: usize, n: usize, compute: FloatDType) -> Option<Dense<'_>> {
    let wanted = match compute {
        FloatDType::F32 => DType::F32,
        FloatDType::BF16 => DType::BF16,
        _ => return None,
    };
    if w.dtype() != wanted {
        return None;
    }
    let layout = w.layout();
    let (rs, cs, off) = (
        layout.strides()[0],
        layout.strides()[1],
        layout.start_offset(),
    );
    let weights = match w.dtype() {
        DType::F32 => Weights::F32(&w.storage::<f32>()[off..]),
        _ => Weights::Bf16(&w.storage::<bf16>()[off..]),
    };
    if cs == 1 && rs == n as isize {
        Some(Dense::RowsIn(weights))
    } else if rs == 1 && cs == k as isize {
        Some(Dense::RowsOut(weights))
    } else {
        None
    }
}

/// The f32 sums `x` `[m, k]` × `w` → `[m, n]` by `crate::gemm` (many rows) or `crate::gemv`
/// (one row); `None` for many rows over `[in, out]` memory (left to burn).
fn dense_sums(xs: &[f32], m: usize, k: usize, w: &Dense<'_>, n: usize) -> Option<Vec<f32>> {
    Some(match (w, m) {
        (Dense::RowsOut(Weights::F32(w)), 2..) => crate::gemm::matmul_rows(xs, m, k, w, n),
        (Dense::RowsOut(Weights::Bf16(w)), 2..) => crate::gemm::matmul_rows(xs, m, k, w, n),
        (Dense::RowsIn(_), 2..) => return None,
        (Dense::RowsIn(Weights::F32(w)), _) => axpy_rows(xs, w, n),
        (Dense::RowsIn(Weights::Bf16(w)), _) => axpy_rows(xs, w, n),
        (Dense::RowsOut(Weights::F32(w)), _) => dot_rows(xs, w, k, n),
        (Dense::RowsOut(Weights::Bf16(w)), _) => dot_rows(xs, w, k, n),
    })
}

/// `x` `[m, k]` × `matrices` through `crate::gemm_bf16` with `epilogue` → `[m, n]` in `round`'s
/// dtype; `None` where the kernel does not run. The activations are read in place when they
/// are bf16 or f32 storage, else widened to f32 first.
fn tiles(
    x: &Tensor<Flex, 2>,
    matrices: &[Matrix<'_>],
    n: usize,
    epilogue: Epilogue<'_>,
    round: Round,
) -> Option<Tensor<Flex, 2>> {
    let [m, k] = x.dims();
    let xp = primitive(x);
    let held: Vec<f32>;
    let input = if let Some(s) = xp.as_slice::<bf16>() {
        Input::Bf16(s)
    } else if let Some(s) = xp.as_slice::<f32>() {
        Input::F32(s)
    } else {
        held = to_f32(x);
        Input::F32(&held)
    };
    let device = Default::default();
    Some(
        match gemm_bf16::product(input, m, k, matrices, n, epilogue, round)? {
            Output::F32(v) => Tensor::from_data(
                TensorData::new(v, [m, n]),
                (&device, FloatDType::F32.into()),
            ),
            Output::Bf16(v) => Tensor::from_data(
                TensorData::new(v, [m, n]),
                (&device, FloatDType::BF16.into()),
            ),
        },
    )
}

/// f32 sums → a tensor of `compute`: rounded, then `+ bias` and rounded again.
fn finish(
    mut y: Vec<f32>,
    shape: [usize; 2],
    compute: FloatDType,
    bias: Option<&[f32]>,
) -> Tensor<Flex, 2> {
    if let (Some(b), Some(round)) = (bias, Round::of(compute)) {
        let n = shape[1];
        let rows = (CHUNK / n.max(1)).max(1) * n.max(1);
        for_chunks(&mut y, rows, |y| {
            for row in y.chunks_mut(n.max(1)) {
                for (v, &b) in row.iter_mut().zip(b) {
                    *v = round.apply(round.apply(*v) + b);
                }
            }
        });
    }
    from_f32(y, shape, compute)
}

/// `s` rounded to `round` in place (the value a tensor of that dtype holds).
fn round_all(s: &mut [f32], round: Round) {
    if round != Round::F32 {
        for_chunks(s, CHUNK, |c| {
            c.iter_mut().for_each(|v| *v = round.apply(*v))
        });
    }
}

/// A SwiGLU operand as the tiles take it, if they take it at `m` rows.
fn swiglu_tile<'a>(
    w: &'a ProjectionWeight<Flex>,
    dense: &Option<Dense<'a>>,
    m: usize,
) -> Option<Matrix<'a>> {
    match (w, dense) {
        (ProjectionWeight::Dense(_), Some(Dense::RowsOut(Weights::Bf16(w)))) => {
            (m >= 2).then_some(Matrix::Bf16(w))
        }
        (ProjectionWeight::Quantized(q), _) => {
            (m >= BF16_TILE_MIN_ROWS && bf16_tiles_allowed()).then_some(Matrix::Quantized(q))
        }
        _ => None,
    }
}

impl MatmulKernel<Flex> for CpuMatmul {
    fn matmul(
        &self,
        x: &Tensor<Flex, 2>,
        weight: &Tensor<Flex, 2>,
        bias: Option<&Tensor<Flex, 1>>,
        compute: FloatDType,
    ) -> Option<Tensor<Flex, 2>> {
        let [m, k] = x.dims();
        let [k_w, n] = weight.dims();
        let w = primitive(weight);
        let round = Round::of(compute)?;
        if k != k_w {
            return None;
        }
        let w = dense(&w, k, n, compute)?;
        let bias = bias.map(to_f32);
        if let (2.., Dense::RowsOut(Weights::Bf16(wb))) = (m, &w) {
            let epilogue = Epilogue::Store(bias.as_deref());
            if let Some(y) = tiles(x, &[Matrix::Bf16(wb)], n, epilogue, round) {
                return Some(y);
            }
        }
        let y = dense_sums(&to_f32(x), m, k, &w, n)?;
        Some(finish(y, [m, n], compute, bias.as_deref()))
    }

    /// Quantized weights: the rows read without a copy through burn, and for many rows on an
    /// AVX512-BF16 CPU dequantized to bf16 per task for the tiles; otherwise the activation
    /// quantized per block to 8 bits and multiplied by qwen2-quant's integer kernels for this
    /// CPU (AVX-512 VNNI, AVX2 or portable; `QWEN2_QUANT_PATH` forces one).
    fn matmul_quantized(
        &self,
        x: &Tensor<Flex, 2>,
        weight: &QuantMatrix,
        bias: Option<&Tensor<Flex, 1>>,
        compute: FloatDType,
    ) -> Option<Tensor<Flex, 2>> {
        let [m, k] = x.dims();
        let n = weight.rows();
        if k != weight.cols() {
            return None;
        }
        let round = Round::of(compute)?;
        let bias = bias.map(to_f32);
        if m >= BF16_TILE_MIN_ROWS && bf16_tiles_allowed() {
            let epilogue = Epilogue::Store(bias.as_deref());
            if let Some(y) = tiles(x, &[Matrix::Quantized(weight)], n, epilogue, round) {
                return Some(y);
            }
        }
        let y = quantized_rows(&to_f32(x), m, weight);
        Some(finish(y, [m, n], compute, bias.as_deref()))
    }

    fn matmul_swiglu(
        &self,
        x: &Tensor<Flex, 2>,
        gate: &ProjectionWeight<Flex>,
        up: &ProjectionWeight<Flex>,
        compute: FloatDType,
    ) -> Option<Tensor<Flex, 2>> {
        let [m, k] = x.dims();
        let [n, k_w] = gate.dims();
        let round = Round::of(compute)?;
        if k != k_w || up.dims() != [n, k] {
            return None;
        }
        // Dense weights as the `[k, n]` views `matmul` takes.
        let views = [gate, up].map(|w| w.dense().map(|w| primitive(&w.clone().transpose())));
        let denses: Vec<Option<Dense<'_>>> = views
            .iter()
            .map(|v| v.as_ref().and_then(|v| dense(v, k, n, compute)))
            .collect();
        // The tiles, with SwiGLU applied per task.
        if let (Some(g), Some(u)) = (
            swiglu_tile(gate, &denses[0], m),
            swiglu_tile(up, &denses[1], m),
        ) {
            if let Some(y) = tiles(x, &[g, u], n, Epilogue::Swiglu, round) {
                return Some(y);
            }
        }
        // Otherwise both products on the other routes, rounded, and SwiGLU on the host.
        let xs = to_f32(x);
        let sums = |w: &ProjectionWeight<Flex>, d: &Option<Dense<'_>>| match w {
            ProjectionWeight::Quantized(q) => Some(quantized_rows(&xs, m, q)),
            ProjectionWeight::Dense(_) => dense_sums(&xs, m, k, d.as_ref()?, n),
        };
        let (mut g, mut u) = (sums(gate, &denses[0])?, sums(up, &denses[1])?);
        round_all(&mut g, round);
        round_all(&mut u, round);
        zip_chunks(&mut g, &u, CHUNK, CHUNK, |g, u| {
            crate::fused::swiglu_slice(g, u, round)
        });
        Some(from_f32(g, [m, n], compute))
    }
}

#[cfg(test)]
mod tests;
