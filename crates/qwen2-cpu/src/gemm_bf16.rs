//! Many-row products over bf16 weights with AVX512-BF16's `vdpbf16ps` (prefill).
//!
//! `vdpbf16ps` multiplies 32 bf16 pairs and adds each pair's two products into one of sixteen
//! f32 lanes: 64 FLOPs per instruction against the 16 of an eight-lane f32 FMA, reading half
//! the bytes. The `m` activation rows are converted to bf16 once per call (zero-padded to a
//! multiple of [`MR`] rows and of 32 columns); the kernel is then the dot-product form of
//! `crate::gemm` (no weight packing: activation and weight rows are both contiguous along `k`).
//! A block of `MR × NR` outputs keeps that many sixteen-lane accumulators, each a partial dot
//! product along `k`, and a transposing reduction folds sixteen accumulators into one vector of
//! sixteen sums (30 shuffles and 15 adds instead of 16 × 8 for lane-by-lane reductions). Work
//! is split across the rayon pool by weight rows, as in `crate::gemm`. A 4 × 4 block (16
//! accumulators, eight 64-byte loads per sixteen `vdpbf16ps`) measured ahead of 8 × 2, 8 × 3,
//! 6 × 4 and 4 × 6 on the 2-core Zen 4 benchmark machine, where the MLP's prefill shapes run at
//! 340–370 GFLOP/s (two threads; the AVX2 path: 105–165; the instruction's peak there: ~460).
//!
//! Numerics: activations that are already bf16 values (the bf16 precision plan) convert
//! exactly; any other f32 is rounded to the nearest bf16, ties to even (`vcvtne2ps2bf16`), a
//! relative error of at most 2^-9 per activation. Products of two bf16 values are exact in
//! f32; `vdpbf16ps` adds them into the f32 lanes with round-to-nearest-even and treats bf16
//! denormal inputs and f32 denormal results as zero whatever MXCSR says (|x|, |w| < 2^-126 count
//! as 0). Each lane sums `k / 16` products one rounding at a time, then the reduction adds
//! sixteen lanes and the passes along `k` add up, so against the exact sum
//! `|y - Σ x·w| ≤ (k / 16 + 8) · 2^-24 · Σ |x·w|` (plus `k · 2^-126` from flushed denormals):
//! the same order as the AVX2 path's `(k / 8 + 8) · 2^-24 · Σ |x·w|`.
//!
//! Two forms share one driver (`driver.rs`): the pool's products of 8 activation rows or more
//! with `k` even (every prefill projection) run the outer-product blocks of `packed.rs`, which
//! pack the activations once per call and need no reduction (a plain f32 sum along `k` per
//! output, `(k / 2 + 8) · 2^-24 · Σ |x·w|`; 1.07–1.15× the tiles on the gate/up shape, 0.93×
//! on down_proj's, 1.05–1.25× on a whole prefill); the others (attention's per-head products,
//! few rows) run the tiles above. Each task sums into a per-thread block, then rounds to the
//! output dtype and adds the bias or applies SwiGLU as it stores (the epilogue).
//!
//! Used only when the CPU has AVX512-BF16, AVX512F, AVX512BW and AVX512VL and the environment does not
//! set `QWEN2_CPU_BF16_DOT=0` ([`enabled`]).

use std::sync::OnceLock;

use half::bf16;

use crate::host::Round;

/// Activation rows per register block.
const MR: usize = 4;
/// Weight rows per register block.
const NR: usize = 4;
/// Weight rows per task (a multiple of `NR`): 56 tasks for n = 896 keep two threads busy.
/// Measured on the 2-core benchmark machine, 8, 16 and 32 rows and passes of 1024 or 2048 run
/// within a few percent of each other.
const TASK_ROWS: usize = 16;
/// The longest `k` extent of one pass (a multiple of 32): four activation rows of 2048 bf16
/// (16 KiB) stay in L1, a task's 16 weight rows (64 KiB) in L2.
const KC: usize = 2048;

/// The environment variable that turns the kernel off when set to `0` (for A/B measurements
/// and to run the AVX2 path on a CPU that has AVX512-BF16).
pub const DISABLE_VAR: &str = "QWEN2_CPU_BF16_DOT";

/// Whether the CPU has the instructions the kernel uses (AVX512-BF16, AVX512F, AVX512BW).
pub fn cpu_has_bf16_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`matmul_rows`] runs: the CPU has the instructions and `QWEN2_CPU_BF16_DOT` is not
/// `0` (read once per process).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| cpu_has_bf16_dot() && std::env::var(DISABLE_VAR).as_deref() != Ok("0"))
}

/// The activation rows of a product, `[m, k]` row-major.
#[derive(Clone, Copy)]
pub enum Input<'a> {
    /// f32 values, rounded to bf16 to nearest even (exact for values that are bf16).
    F32(&'a [f32]),
    /// bf16 values (the bf16 plan's activations), used as they are.
    Bf16(&'a [bf16]),
}

/// A weight matrix `[n, k]` (HF's `[out, in]`).
#[derive(Clone, Copy)]
pub enum Matrix<'a> {
    /// Dense bf16 rows.
    Bf16(&'a [bf16]),
    /// Quantized rows, dequantized to bf16 task by task (exact for the integer part; the f16
    /// block scales times the quants rounded to bf16, a relative error of at most 2^-9).
    Quantized(&'a qwen2_quant::QuantMatrix),
}

/// What happens to the f32 sums of one matrix (or two) before they are stored.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// Rounded to the output dtype; with a bias (`n` values of the output dtype), the bias is
    /// added to the rounded product and the sum rounded again (the graph's `y + b`).
    Store(Option<&'a [f32]>),
    /// Two matrices, gate and up: `silu(g) · u` with `g`, `u` the rounded products, rounded as
    /// `crate::fused`'s SwiGLU rounds (the graph's `silu(gate) * up`).
    Swiglu,
}

/// A product's `[m, n]` outputs.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// f32 outputs.
    F32(Vec<f32>),
    /// bf16 outputs.
    Bf16(Vec<bf16>),
}

/// `x` `[m, k]` × every matrix's `[n, k]`ᵀ, summed in f32 (see the module doc), through
/// `epilogue` into `[m, n]` outputs of `out` (f32 or bf16; f16 stores f32 sums), on the rayon
/// pool. `None` when the kernel is not [`enabled`], `k` is 0 or the operands do not fit (the
/// caller then runs its own product).
#[allow(clippy::too_many_arguments)]
pub fn product(
    x: Input<'_>,
    m: usize,
    k: usize,
    matrices: &[Matrix<'_>],
    n: usize,
    epilogue: Epilogue<'_>,
    out: Round,
) -> Option<Output> {
    product_on(x, m, k, matrices, n, epilogue, out, true)
}

/// [`product`] on the pool when `pooled`, else on the calling thread.
#[allow(clippy::too_many_arguments)]
fn product_on(
    x: Input<'_>,
    m: usize,
    k: usize,
    matrices: &[Matrix<'_>],
    n: usize,
    epilogue: Epilogue<'_>,
    out: Round,
    pooled: bool,
) -> Option<Output> {
    let x_len = match x {
        Input::F32(x) => x.len(),
        Input::Bf16(x) => x.len(),
    };
    let fits = |w: &Matrix<'_>| match w {
        Matrix::Bf16(w) => w.len() >= n * k,
        Matrix::Quantized(q) => q.rows() == n && q.cols() == k,
    };
    let count = match epilogue {
        Epilogue::Store(bias) => bias.is_none_or(|b| b.len() >= n) && matrices.len() == 1,
        Epilogue::Swiglu => matrices.len() == 2,
    };
    if !enabled() || k == 0 || x_len < m * k || !count || !matrices.iter().all(fits) {
        return None;
    }
    if out == Round::F16 {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `enabled` checked AVX512-BF16, AVX512F, AVX512BW and AVX512VL; the operands
        // were checked above.
        Some(unsafe { driver::product(x, m, k, matrices, n, epilogue, out, pooled) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = pooled;
        None
    }
}

/// `y[i * n + j] = Σ_p x[i * k + p] · w[j * k + p]` for `x` `[m, k]` (rounded to bf16, see the
/// module doc), `w` `[n, k]`, `y` `[m, n]` f32, on the rayon pool; `None` when [`product`] is.
pub fn matmul_rows(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize) -> Option<Vec<f32>> {
    f32_rows(x, m, k, w, n, true)
}

/// [`matmul_rows`] on the calling thread only (for callers that parallelize around it).
pub fn matmul_rows_serial(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize) -> Option<Vec<f32>> {
    f32_rows(x, m, k, w, n, false)
}

/// The plain f32 product of [`matmul_rows`], on the pool when `pooled`.
fn f32_rows(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize, pooled: bool) -> Option<Vec<f32>> {
    let matrix = [Matrix::Bf16(w)];
    let y = product_on(
        Input::F32(x),
        m,
        k,
        &matrix,
        n,
        Epilogue::Store(None),
        Round::F32,
        pooled,
    )?;
    match y {
        Output::F32(y) => Some(y),
        Output::Bf16(_) => unreachable!("f32 was asked for"),
    }
}

/// Whether the tests may call the kernel directly.
#[cfg(test)]
fn enabled_for_tests() -> bool {
    cpu_has_bf16_dot()
}

#[cfg(target_arch = "x86_64")]
mod dequant;
#[cfg(target_arch = "x86_64")]
mod driver;
#[cfg(target_arch = "x86_64")]
mod packed;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests;
#[cfg(target_arch = "x86_64")]
mod tiles;
