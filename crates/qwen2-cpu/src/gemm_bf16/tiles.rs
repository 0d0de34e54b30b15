//! The `vdpbf16ps` register tiles (see the parent module's doc for the blocking and the
//! numerics): activation rows as padded bf16, and the block and tile loops.

use std::arch::x86_64::*;
use std::borrow::Cow;
use std::mem::transmute;
use std::ops::Range;

use half::bf16;

use super::{KC, MR, NR};

/// Activation (or dequantized weight) rows as bf16 bits: `m` rows of `k` padded with zeros
/// to a multiple of `MR` rows of `stride` (a multiple of 32); borrowed when the rows already
/// are that.
pub(super) struct Rows<'a> {
    pub(super) bits: Cow<'a, [u16]>,
    pub(super) stride: usize,
}

/// `x` `[m, k]` (bf16 values) as [`Rows`]: borrowed when `k` is a multiple of 32 and `m` of
/// `MR`, else copied (zero-padded) into `bits`' allocation.
pub(super) fn rows_from_bf16(x: &[bf16], m: usize, k: usize, mut bits: Vec<u16>) -> Rows<'_> {
    let stride = k.next_multiple_of(32);
    let x: &[u16] = bytemuck::cast_slice(&x[..m * k]);
    if stride == k && m.is_multiple_of(MR) {
        return Rows {
            bits: Cow::Borrowed(x),
            stride,
        };
    }
    bits.clear();
    bits.reserve(m.next_multiple_of(MR) * stride);
    for row in x.chunks_exact(k.max(1)) {
        bits.extend_from_slice(row);
        bits.resize(bits.len() + stride - k, 0);
    }
    bits.resize(m.next_multiple_of(MR) * stride, 0);
    Rows {
        bits: Cow::Owned(bits),
        stride,
    }
}

/// `x` `[m, k]` as bf16 rows in `bits`' allocation, rounded to nearest even (exact for bf16
/// values).
///
/// # Safety
/// The CPU has AVX512-BF16 and AVX512F; `x` holds `m * k` elements.
#[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
pub(super) unsafe fn rows_from_f32(
    x: &[f32],
    m: usize,
    k: usize,
    mut bits: Vec<u16>,
) -> Rows<'static> {
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
    Rows {
        bits: Cow::Owned(bits),
        stride,
    }
}

/// Outputs `[0..m, rows]` of `x` `[m, k]` × `w`ᵀ into `y` (row `i` at `i * n`), in passes of at
/// most `KC` along `k`, `MR` activation rows at a time: the first pass stores, later ones add.
///
/// # Safety
/// The CPU has AVX512-BF16, AVX512F and AVX512BW; `xb` holds `x` `[m, k]`; `w` holds
/// `rows.end` rows of `ldw ≥ k` elements; `y` points at `[m, n]` outputs that no other thread
/// writes in columns `rows`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
pub(super) unsafe fn block_with_stride(
    xb: &Rows<'_>,
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
