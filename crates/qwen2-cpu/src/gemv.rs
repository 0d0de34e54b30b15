//! One-row matrix products (`[1, in] × [in, out]`) for decode steps on the CPU.
//!
//! A decode step reads every weight once, so its speed is memory bandwidth. The generic gemm
//! behind burn-flex's matmul reaches about half of the machine's bandwidth at one row; these
//! loops stream each weight matrix once, split across the rayon pool, with f32 accumulation
//! (bf16 weights are widened in registers, which is exact).

use half::bf16;
use rayon::prelude::*;

use crate::gemm::Lanes;

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

/// Columns per task: enough tasks to balance the pool, each a long contiguous run.
fn chunk_len(n: usize) -> usize {
    let tasks = rayon::current_num_threads() * 2;
    n.div_ceil(tasks).next_multiple_of(16).max(64)
}

/// `y[j] = Σ_i x[i] w[i * n + j]`: each task owns a range of columns and streams its part of
/// every row.
pub(crate) fn axpy_rows<W: Weight>(x: &[f32], w: &[W], n: usize) -> Vec<f32> {
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
pub(crate) fn dot_rows<W: Lanes>(x: &[f32], w: &[W], k: usize, n: usize) -> Vec<f32> {
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
