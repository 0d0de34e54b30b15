//! Many-row products (`[m, k] × W^T`, prefill) over weights in HF's `[out, in]` memory.
//!
//! Every output is a dot product of an activation row with a weight row, and both are
//! contiguous along `k`, so the kernel needs no packing: a 4 × 3 block of outputs keeps twelve
//! 8-lane accumulators in registers and streams four activation rows and three weight rows.
//! Work is split by weight rows (each task owns a disjoint set of output columns); within a task
//! the four activation rows stay in L1 while the task's weight rows come from L2. bf16 weights
//! are widened in registers (exact). On the 2-core benchmark machine this runs at 100–135
//! GFLOP/s against burn-flex's gemm at 70–90.

use rayon::prelude::*;

use crate::gemv::Weight;

/// Activation rows per register block.
const MR: usize = 4;
/// Weight rows per register block.
const NR: usize = 3;
/// Weight rows per task: 48 rows of 1024 f32 (192 KiB) stay in a 512 KiB L2.
const TASK_ROWS: usize = 48;
/// The `k` extent of one pass over a task's weight rows.
const KC: usize = 1024;

/// `y[i * n + j] = Σ_p x[i * k + p] · w[j * k + p]` for `x` `[m, k]`, `w` `[n, k]`, `y` `[m, n]`,
/// accumulated in f32, split across the rayon pool. bf16 weights take `crate::gemm_bf16`'s
/// vdpbf16ps kernel where the CPU has it, which rounds `x` to bf16 (the projections' inputs in
/// the bf16 plan already are bf16 values).
pub fn matmul_rows<W: Lanes>(x: &[f32], m: usize, k: usize, w: &[W], n: usize) -> Vec<f32> {
    let bf16_dot = |w| crate::gemm_bf16::matmul_rows(x, m, k, w, n);
    W::as_bf16(w)
        .and_then(bf16_dot)
        .unwrap_or_else(|| product(x, m, k, w, n, true))
}

/// [`matmul_rows`] on the calling thread only (for callers that parallelize around it), with
/// `x` in f32 whatever `W` is (attention's queries may be f32 against a bf16 cache).
pub fn matmul_rows_serial<W: Lanes>(x: &[f32], m: usize, k: usize, w: &[W], n: usize) -> Vec<f32> {
    product(x, m, k, w, n, false)
}

/// The product in tasks of `TASK_ROWS` weight rows, on the pool when `pooled`.
fn product<W: Lanes>(x: &[f32], m: usize, k: usize, w: &[W], n: usize, pooled: bool) -> Vec<f32> {
    assert!(
        x.len() >= m * k && w.len() >= n * k,
        "operands cover [m, k] and [n, k]"
    );
    let mut y = vec![0.0f32; m * n];
    let out = SharedOut(y.as_mut_ptr());
    let block = pick_block::<W>();
    let task = |task: usize| {
        let rows = task * TASK_ROWS..((task + 1) * TASK_ROWS).min(n);
        // SAFETY: tasks write disjoint column ranges of `y`, which outlives them.
        unsafe { block(x, m, k, w, n, rows, out.get()) }
    };
    let tasks = n.div_ceil(TASK_ROWS);
    if pooled {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    y
}

/// The output pointer, shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
impl SharedOut {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: see `matmul_rows`: every task writes only its own columns.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

type BlockFn<W> = unsafe fn(&[f32], usize, usize, &[W], usize, std::ops::Range<usize>, *mut f32);

/// Weight elements the kernel reads eight at a time.
pub trait Lanes: Weight {
    /// Whether one-row products stream four weight rows at once. Measured on the benchmark
    /// machine (358M-element matrix, 2 threads): f32 18–19 GB/s with four rows, 17–19 with
    /// one; bf16 11–13 GB/s with four, 17–19 with one.
    const DOT_FOUR_ROWS: bool;

    /// Eight elements from `p` widened to f32 lanes.
    ///
    /// # Safety
    /// `p..p + 8` must be readable; the CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;

    /// The weights as bf16 (for `crate::gemm_bf16`), `None` for f32.
    fn as_bf16(_w: &[Self]) -> Option<&[half::bf16]> {
        None
    }
}

impl Lanes for f32 {
    const DOT_FOUR_ROWS: bool = true;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Lanes for half::bf16 {
    const DOT_FOUR_ROWS: bool = false;
    fn as_bf16(w: &[half::bf16]) -> Option<&[half::bf16]> {
        Some(w)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::bf16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let raw = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16))
    }
}

/// Whether the CPU runs the `avx2` kernels (AVX2 and FMA; the check is cached by std).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

fn pick_block<W: Lanes>() -> BlockFn<W> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        return avx2::block::<W>;
    }
    portable_block::<W>
}

/// Outputs `[0..m, rows]` with the portable tile.
///
/// # Safety
/// `y` points at an `[m, n]` buffer that no other thread writes in columns `rows`.
unsafe fn portable_block<W: Lanes>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[W],
    n: usize,
    rows: std::ops::Range<usize>,
    y: *mut f32,
) {
    for i in 0..m {
        for j in rows.clone() {
            *y.add(i * n + j) = dot(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
        }
    }
}

/// `Σ x[p] · w[p]` in eight partial sums then [`lane_sum`] (the portable kernels' dot product).
#[inline(always)]
pub(crate) fn dot<W: Weight>(x: &[f32], w: &[W]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, wc) = (x.chunks_exact(8), w.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(wc.remainder())
        .map(|(a, b)| a * b.f32())
        .sum();
    for (xs, ws) in xc.zip(wc) {
        for l in 0..8 {
            acc[l] += xs[l] * ws[l].f32();
        }
    }
    lane_sum(&acc) + tail
}

/// Register-blocked tiles with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use super::{Lanes, KC, MR, NR};

    /// Outputs `[0..m, rows]`, in passes of `KC` along `k`, four activation rows at a time.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `y` points at an `[m, n]` buffer that no other thread
    /// writes in columns `rows`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block<W: Lanes>(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[W],
        n: usize,
        rows: std::ops::Range<usize>,
        y: *mut f32,
    ) {
        // One pass when k is at most a little over KC; else KC-wide passes.
        let kc = if k <= KC + KC / 4 { k } else { KC };
        let mut k0 = 0;
        while k0 < k {
            let len = kc.min(k - k0);
            let mut i = 0;
            while i < m {
                let mr = (m - i).min(MR);
                let mut j = rows.start;
                while j < rows.end {
                    let nr = (rows.end - j).min(NR);
                    let xs = x[i * k + k0..].as_ptr();
                    let ws = w[j * k + k0..].as_ptr();
                    let out = y.add(i * n + j);
                    macro_rules! tiles {
                        ($($a:literal, $b:literal);*) => {
                            match (mr, nr) {
                                $(($a, $b) => tile::<W, $a, $b>(xs, k, ws, k, len, out, n),)*
                                _ => unreachable!("mr <= MR and nr <= NR"),
                            }
                        };
                    }
                    tiles!(4, 3; 4, 2; 4, 1; 3, 3; 3, 2; 3, 1; 2, 3; 2, 2; 2, 1; 1, 3; 1, 2; 1, 1);
                    j += nr;
                }
                i += mr;
            }
            k0 += len;
        }
    }

    /// One activation row against weight rows `j0..j0 + y.len()` (`y[jj] = x · w[j0 + jj]`),
    /// one or four rows at a time ([`Lanes::DOT_FOUR_ROWS`]) with two accumulators each: the
    /// decode step, bound by how fast the weights stream in.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_block<W: Lanes>(x: &[f32], w: &[W], k: usize, y: &mut [f32], j0: usize) {
        assert!(
            x.len() >= k && w.len() >= (j0 + y.len()) * k,
            "operands cover the rows"
        );
        let mut jj = 0;
        while W::DOT_FOUR_ROWS && jj + 4 <= y.len() {
            dot_rows::<W, 4>(
                x.as_ptr(),
                w[(j0 + jj) * k..].as_ptr(),
                k,
                &mut y[jj..jj + 4],
            );
            jj += 4;
        }
        while jj < y.len() {
            dot_rows::<W, 1>(
                x.as_ptr(),
                w[(j0 + jj) * k..].as_ptr(),
                k,
                &mut y[jj..jj + 1],
            );
            jj += 1;
        }
    }

    /// `y[b] = Σ_p x[p] · w[b * k + p]` for `b < C`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `x` holds `k` elements and `w` `C` rows of `k`.
    #[inline(always)]
    unsafe fn dot_rows<W: Lanes, const C: usize>(
        x: *const f32,
        w: *const W,
        k: usize,
        y: &mut [f32],
    ) {
        let (mut even, mut odd) = ([_mm256_setzero_ps(); C], [_mm256_setzero_ps(); C]);
        let mut p = 0;
        while p + 16 <= k {
            let (x0, x1) = (_mm256_loadu_ps(x.add(p)), _mm256_loadu_ps(x.add(p + 8)));
            for (b, (even, odd)) in even.iter_mut().zip(odd.iter_mut()).enumerate() {
                *even = _mm256_fmadd_ps(x0, W::load8(w.add(b * k + p)), *even);
                *odd = _mm256_fmadd_ps(x1, W::load8(w.add(b * k + p + 8)), *odd);
            }
            p += 16;
        }
        if p + 8 <= k {
            let x0 = _mm256_loadu_ps(x.add(p));
            for (b, even) in even.iter_mut().enumerate() {
                *even = _mm256_fmadd_ps(x0, W::load8(w.add(b * k + p)), *even);
            }
            p += 8;
        }
        for b in 0..C {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(even[b], odd[b]));
            let mut sum = super::lane_sum(&lanes);
            for q in p..k {
                sum += *x.add(q) * (*w.add(b * k + q)).f32();
            }
            y[b] = sum;
        }
    }

    /// Adds `Σ_{p < len} x[a * ldx + p] · w[b * ldw + p]` to `y[a * ldy + b]` for `a < R`,
    /// `b < C`: `R × C` accumulators of eight lanes.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; the `R` rows of `x` and `C` rows of `w` hold `len` elements
    /// from the pointers; `y` is valid for those writes.
    #[inline(always)]
    unsafe fn tile<W: Lanes, const R: usize, const C: usize>(
        x: *const f32,
        ldx: usize,
        w: *const W,
        ldw: usize,
        len: usize,
        y: *mut f32,
        ldy: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let vec_len = len & !7;
        let mut p = 0;
        while p < vec_len {
            let mut wv = [_mm256_setzero_ps(); C];
            for (b, wv) in wv.iter_mut().enumerate() {
                *wv = W::load8(w.add(b * ldw + p));
            }
            for (a, acc) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.add(a * ldx + p));
                for (acc, wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm256_fmadd_ps(xv, *wv, *acc);
                }
            }
            p += 8;
        }
        for (a, acc) in acc.iter().enumerate() {
            for (b, acc) in acc.iter().enumerate() {
                let mut lanes = [0.0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), *acc);
                let mut sum = super::lane_sum(&lanes);
                for q in vec_len..len {
                    sum += *x.add(a * ldx + q) * (*w.add(b * ldw + q)).f32();
                }
                *y.add(a * ldy + b) += sum;
            }
        }
    }
}

/// The eight lanes summed pairwise (the same order on every machine).
#[inline(always)]
pub(crate) fn lane_sum(v: &[f32; 8]) -> f32 {
    ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
}

#[cfg(test)]
mod tests {
    use half::bf16;

    use super::*;

    fn reference<W: Lanes>(x: &[f32], m: usize, k: usize, w: &[W], n: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p].f32() as f64)
                    .sum();
            }
        }
        y
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn the_portable_path_matches_the_reference_too() {
        // What a CPU without AVX2/FMA runs (this machine would otherwise never take it).
        let (m, k, n) = (5, 37, 11);
        let (x, w) = (values(m * k, 3), values(n * k, 4));
        let mut y = vec![0.0f32; m * n];
        // SAFETY: `y` is `[m, n]`, written by this thread only.
        unsafe { portable_block(&x, m, k, &w, n, 0..n, y.as_mut_ptr()) };
        for (a, b) in y.iter().zip(reference(&x, m, k, &w, n)) {
            assert!((*a as f64 - b).abs() <= 1e-6 * k as f64, "{a} vs {b}");
        }
        let serial = matmul_rows_serial(&x, m, k, &w, n);
        let parallel = matmul_rows(&x, m, k, &w, n);
        assert_eq!(
            serial, parallel,
            "serial and pooled runs sum in the same order"
        );
    }

    #[test]
    fn every_edge_tile_and_k_tail_matches_a_f64_reference() {
        // m and n not multiples of the tile, k with a tail and more than one KC pass.
        for (m, k, n) in [(7, 13, 5), (9, 40, 98), (130, 1300, 50), (2, 2600, 7)] {
            let x = values(m * k, 1);
            let w = values(n * k, 2);
            let y = matmul_rows(&x, m, k, &w, n);
            let r = reference(&x, m, k, &w, n);
            let bound = 1e-6 * k as f64;
            for (a, b) in y.iter().zip(&r) {
                assert!((*a as f64 - b).abs() <= bound, "{m}x{k}x{n}: {a} vs {b}");
            }
            // bf16 weights take bf16 activations (the vdpbf16ps kernel rounds x to bf16).
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let x: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
            let y = matmul_rows(&x, m, k, &wb, n);
            let r = reference(&x, m, k, &wb, n);
            for (a, b) in y.iter().zip(&r) {
                assert!(
                    (*a as f64 - b).abs() <= bound,
                    "bf16 {m}x{k}x{n}: {a} vs {b}"
                );
            }
        }
    }
}
