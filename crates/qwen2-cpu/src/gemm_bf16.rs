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
//! Used only when the CPU has AVX512-BF16, AVX512F, AVX512BW and AVX512VL and the environment does not
//! set `QWEN2_CPU_BF16_DOT=0` ([`enabled`]).

use std::sync::OnceLock;

use half::bf16;

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

/// `y[i * n + j] = Σ_p x[i * k + p] · w[j * k + p]` for `x` `[m, k]` (rounded to bf16, see the
/// module doc), `w` `[n, k]`, `y` `[m, n]`, on the rayon pool when `pooled`; `None` when the
/// kernel is not [`enabled`] (the caller then runs its own).
pub fn matmul_rows(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[bf16],
    n: usize,
    pooled: bool,
) -> Option<Vec<f32>> {
    if !enabled() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `enabled` checked AVX512-BF16, AVX512F and AVX512BW.
        Some(unsafe { avx512::product(x, m, k, w, n, pooled) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, m, k, w, n, pooled);
        None
    }
}

/// `x` `[m, k]` × the quantized `w`ᵀ (`n = w.rows()` rows of `k = w.cols()`) → `[m, n]` f32:
/// each task dequantizes its weight rows to bf16 (exact for the integer part; the f16 block
/// scales times the quants rounded to bf16, a relative error of at most 2^-9 per weight) into
/// a buffer that stays in L2, then runs the same tiles as [`matmul_rows`]. `None` when the
/// kernel is not [`enabled`].
pub fn matmul_quantized_rows(
    x: &[f32],
    m: usize,
    w: &qwen2_quant::QuantMatrix,
) -> Option<Vec<f32>> {
    if !enabled() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `enabled` checked AVX512-BF16, AVX512F and AVX512BW.
        Some(unsafe { avx512::product_quantized(x, m, w) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, m, w);
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::transmute;
    use std::ops::Range;

    use half::bf16;
    use rayon::prelude::*;

    use super::{KC, MR, NR, TASK_ROWS};
    use crate::gemm::SharedOut;

    /// Activation rows as bf16 bits: `m` rows of `k` padded with zeros to a multiple of `MR`
    /// rows of `stride` (a multiple of 32).
    pub(super) struct Rows {
        bits: Vec<u16>,
        stride: usize,
    }

    /// The product (see `super::matmul_rows`).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16, AVX512F and AVX512BW.
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
    pub(super) unsafe fn product(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[bf16],
        n: usize,
        pooled: bool,
    ) -> Vec<f32> {
        assert!(
            x.len() >= m * k && w.len() >= n * k,
            "operands cover [m, k] and [n, k]"
        );
        if k == 0 {
            return vec![0.0; m * n];
        }
        let xb = to_bf16(x, m, k);
        // Not zeroed: the first pass along k stores every output (a memset of `m × n` saved).
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        let out = SharedOut(y.as_mut_ptr());
        let task = |t: usize| {
            let rows = t * TASK_ROWS..((t + 1) * TASK_ROWS).min(n);
            // SAFETY: the caller checked the CPU; tasks write disjoint columns of `y`, which
            // outlives them.
            unsafe { block(&xb, m, k, w, n, rows, out.get()) }
        };
        let tasks = n.div_ceil(TASK_ROWS);
        if pooled {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
        // SAFETY: k > 0, so the tasks, which cover every column, stored every element.
        unsafe { y.set_len(m * n) };
        y
    }

    /// The quantized product (see `super::matmul_quantized_rows`).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16, AVX512F and AVX512BW.
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
    pub(super) unsafe fn product_quantized(
        x: &[f32],
        m: usize,
        w: &qwen2_quant::QuantMatrix,
    ) -> Vec<f32> {
        let (n, k) = (w.rows(), w.cols());
        assert!(x.len() >= m * k, "operands cover [m, k]");
        let xb = to_bf16(x, m, k);
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        let out = SharedOut(y.as_mut_ptr());
        let row_bytes = w.row_bytes();
        let task = |t: usize| {
            let rows = t * TASK_ROWS..((t + 1) * TASK_ROWS).min(n);
            let bytes = &w.data()[rows.start * row_bytes..rows.end * row_bytes];
            // Per-thread buffers: a fresh 300 KB allocation per task is a fresh mapping whose
            // pages the kernel zeroes (measured: 15% of a prefill).
            SCRATCH.with_borrow_mut(|(values, bits)| {
                let stride = k.next_multiple_of(32);
                let mut direct = std::mem::take(bits);
                direct.clear();
                direct.resize(rows.len().next_multiple_of(MR) * stride, 0);
                // SAFETY: the caller checked the CPU (and `enabled` AVX512VL with BW);
                // `bytes` holds the task's rows; `direct` has room for them.
                let done = unsafe {
                    super::dequant::rows_to_bf16(
                        w.ggml_type(),
                        bytes,
                        rows.len(),
                        k,
                        &mut direct,
                        stride,
                    )
                };
                let wb = if done {
                    Rows {
                        bits: direct,
                        stride,
                    }
                } else {
                    values.resize(rows.len() * k, 0.0);
                    qwen2_gguf::dequantize_into(w.ggml_type(), bytes, values)
                        .expect("a QuantMatrix holds whole rows of its type");
                    // SAFETY: the caller checked the CPU.
                    unsafe { to_bf16_in(values, rows.len(), k, direct) }
                };
                // SAFETY: as in `product`; the task's rows are `0..len` of `wb`, written to
                // the columns `rows` of `y` (which no other task writes).
                unsafe { block_strided(&xb, m, k, &wb, n, rows.len(), out.get().add(rows.start)) }
                *bits = wb.bits;
            })
        };
        (0..n.div_ceil(TASK_ROWS)).into_par_iter().for_each(task);
        // SAFETY: k > 0 (a QuantMatrix has whole blocks), so every element was stored.
        unsafe { y.set_len(m * n) };
        y
    }

    /// `block` over `rows` weight rows held as [`Rows`] (rows of `wb.stride`, zero-padded).
    ///
    /// # Safety
    /// As `block`.
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
    unsafe fn block_strided(
        xb: &Rows,
        m: usize,
        k: usize,
        wb: &Rows,
        n: usize,
        rows: usize,
        y: *mut f32,
    ) {
        let w = std::slice::from_raw_parts(wb.bits.as_ptr().cast::<bf16>(), wb.bits.len());
        block_with_stride(xb, m, k, w, wb.stride, n, 0..rows, y)
    }

    thread_local! {
        /// A task's dequantized f32 weight rows and their bf16 copy, reused across calls.
        static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<u16>)> =
            const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }

    /// `x` `[m, k]` as bf16, rounded to nearest even (exact for bf16 values).
    ///
    /// # Safety
    /// The CPU has AVX512-BF16 and AVX512F; `x` holds `m * k` elements.
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
    pub(super) unsafe fn to_bf16(x: &[f32], m: usize, k: usize) -> Rows {
        to_bf16_in(x, m, k, Vec::new())
    }

    /// [`to_bf16`] into `bits`' allocation.
    ///
    /// # Safety
    /// As [`to_bf16`].
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
    unsafe fn to_bf16_in(x: &[f32], m: usize, k: usize, mut bits: Vec<u16>) -> Rows {
        let stride = k.next_multiple_of(32);
        bits.clear();
        bits.resize(m.next_multiple_of(MR) * stride, 0);
        for (src, dst) in x[..m * k]
            .chunks_exact(k.max(1))
            .zip(bits.chunks_mut(stride))
        {
            let mut p = 0;
            while p < k {
                let mut tail = [0.0f32; 32];
                let s = if p + 32 <= k {
                    src[p..].as_ptr()
                } else {
                    tail[..k - p].copy_from_slice(&src[p..]);
                    tail.as_ptr()
                };
                let (lo, hi) = (_mm512_loadu_ps(s), _mm512_loadu_ps(s.add(16)));
                let v: __m512i = transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst[p..].as_mut_ptr().cast(), v);
                p += 32;
            }
        }
        Rows { bits, stride }
    }

    /// Outputs `[0..m, rows]`, in passes of at most `KC` along `k`, `MR` activation rows at a
    /// time.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16, AVX512F and AVX512BW; `xb` holds `x` `[m, k]`, `w` `[n, k]`;
    /// `y` points at an `[m, n]` buffer that no other thread writes in columns `rows`.
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
    unsafe fn block(
        xb: &Rows,
        m: usize,
        k: usize,
        w: &[bf16],
        n: usize,
        rows: Range<usize>,
        y: *mut f32,
    ) {
        block_with_stride(xb, m, k, w, k, n, rows, y)
    }

    /// `block` with weight rows `ldw` elements apart.
    ///
    /// # Safety
    /// As `block`; `w` holds `rows.end` rows of `ldw ≥ k` elements.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
    unsafe fn block_with_stride(
        xb: &Rows,
        m: usize,
        k: usize,
        w: &[bf16],
        ldw: usize,
        n: usize,
        rows: Range<usize>,
        y: *mut f32,
    ) {
        let w = w.as_ptr().cast::<u16>();
        // Equal passes, each a multiple of 32 but the last.
        let kc = k.div_ceil(k.div_ceil(KC).max(1)).next_multiple_of(32);
        let mut k0 = 0;
        while k0 < k {
            let len = kc.min(k - k0);
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(MR);
                let xs = xb.bits.as_ptr().add(i * xb.stride + k0);
                let mut j = rows.start;
                while j < rows.end {
                    let nr = (rows.end - j).min(NR);
                    // Rows past `nr` repeat the last one (their sums are dropped).
                    let mut ws = [w; NR];
                    for (b, ws) in ws.iter_mut().enumerate() {
                        *ws = w.add((j + b.min(nr - 1)) * ldw + k0);
                    }
                    let out = Out {
                        y: y.add(i * n + j),
                        ld: n,
                        rows: mr,
                        cols: nr,
                        first: k0 == 0,
                    };
                    tile::<MR, NR>(xs, xb.stride, ws, len, out);
                    j += nr;
                }
                i += MR;
            }
            k0 += len;
        }
    }

    /// Where a tile puts its sums: the first `rows × cols` of an `[.., ld]` block at `y`,
    /// stored on the `first` pass along `k` and added after.
    struct Out {
        y: *mut f32,
        ld: usize,
        rows: usize,
        cols: usize,
        first: bool,
    }

    /// 32 bf16 from `p`.
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512bh {
        bh(_mm512_loadu_si512(p.cast()))
    }

    /// The same 512 bits as 32 bf16.
    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 64 plain bytes.
        unsafe { transmute::<__m512i, __m512bh>(v) }
    }

    /// Puts `Σ_{p < len} x[a * ldx + p] · w[b][p]` in the output at `(a, b)` ([`Out`]) for `a < R`,
    /// `b < C`: `R × C` accumulators of sixteen lanes, 32 elements of `k` a step.
    ///
    /// # Safety
    /// The CPU has AVX512-BF16 and AVX512BW; the `R` rows of `x` hold `len` elements rounded
    /// up to 32 (zeros past `len`), the `C` rows of `w` `len`; `out` is valid for its writes.
    #[inline(always)]
    unsafe fn tile<const R: usize, const C: usize>(
        x: *const u16,
        ldx: usize,
        w: [*const u16; C],
        len: usize,
        out: Out,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        let mut wv: [__m512bh; C] = [bh(_mm512_setzero_si512()); C];
        let full = len & !31;
        let mut p = 0;
        while p < len {
            if p < full {
                for (wv, w) in wv.iter_mut().zip(&w) {
                    *wv = load(w.add(p));
                }
            } else {
                // The k tail: masked loads stop at the weight rows' end; x is zero-padded.
                let mask: __mmask32 = (1u32 << (len - p)) - 1;
                for (wv, w) in wv.iter_mut().zip(&w) {
                    *wv = bh(_mm512_maskz_loadu_epi16(mask, w.add(p).cast()));
                }
            }
            for (a, acc) in acc.iter_mut().enumerate() {
                let xv = load(x.add(a * ldx + p));
                for (acc, wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm512_dpbf16_ps(*acc, xv, *wv);
                }
            }
            p += 32;
        }
        // Sixteen accumulators at a time into one vector of their sums.
        let mut group = 0;
        while group < R * C {
            let mut v = [_mm512_setzero_ps(); 16];
            for (s, v) in v.iter_mut().enumerate() {
                // `hsum16` puts the sum of its input `4 * (l % 4) + l / 4` in lane `l`.
                let l = group + 4 * (s % 4) + s / 4;
                if l < R * C {
                    *v = acc[l / C][l % C];
                }
            }
            let mut sums = [0.0f32; 16];
            _mm512_storeu_ps(sums.as_mut_ptr(), hsum16(v));
            for (s, sum) in sums.iter().enumerate() {
                let (a, b) = ((group + s) / C, (group + s) % C);
                if a < out.rows.min(R) && b < out.cols {
                    let y = out.y.add(a * out.ld + b);
                    *y = if out.first { *sum } else { *y + sum };
                }
            }
            group += 16;
        }
    }

    /// Lane `4 * i + j` of the result is the sum of the sixteen lanes of `v[4 * j + i]`.
    #[inline(always)]
    unsafe fn hsum16(v: [__m512; 16]) -> __m512 {
        // Halves: s[h] holds v[2h]'s eight partial sums in its low half, v[2h + 1]'s high.
        let mut s = [_mm512_setzero_ps(); 8];
        for (h, s) in s.iter_mut().enumerate() {
            let (a, b) = (v[2 * h], v[2 * h + 1]);
            let lo = _mm512_shuffle_f32x4(a, b, 0b01_00_01_00);
            let hi = _mm512_shuffle_f32x4(a, b, 0b11_10_11_10);
            *s = _mm512_add_ps(lo, hi);
        }
        // Quarters: 128-bit chunk c of r[q] holds four partial sums of v[4q + c].
        let mut r = [_mm512_setzero_ps(); 4];
        for (q, r) in r.iter_mut().enumerate() {
            let (a, b) = (s[2 * q], s[2 * q + 1]);
            let even = _mm512_shuffle_f32x4(a, b, 0b10_00_10_00);
            let odd = _mm512_shuffle_f32x4(a, b, 0b11_01_11_01);
            *r = _mm512_add_ps(even, odd);
        }
        // Pairs: chunk c of t[e] holds two partial sums of v[8e + c], then two of v[8e + 4 + c].
        let mut t = [_mm512_setzero_ps(); 2];
        for (e, t) in t.iter_mut().enumerate() {
            let (a, b) = (_mm512_castps_pd(r[2 * e]), _mm512_castps_pd(r[2 * e + 1]));
            let lo = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
            let hi = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
            *t = _mm512_add_ps(lo, hi);
        }
        // Chunk c: the sums of v[c], v[4 + c], v[8 + c], v[12 + c].
        let even = _mm512_shuffle_ps(t[0], t[1], 0b10_00_10_00);
        let odd = _mm512_shuffle_ps(t[0], t[1], 0b11_01_11_01);
        _mm512_add_ps(even, odd)
    }

    /// The tests' and benchmark's way in: the kernel on the calling thread or the pool.
    #[cfg(test)]
    pub(super) fn run(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[bf16],
        n: usize,
        pooled: bool,
    ) -> Vec<f32> {
        assert!(super::cpu_has_bf16_dot());
        // SAFETY: checked just above.
        unsafe { product(x, m, k, w, n, pooled) }
    }
}

#[cfg(target_arch = "x86_64")]
mod dequant;
#[cfg(all(test, target_arch = "x86_64"))]
mod tests;
