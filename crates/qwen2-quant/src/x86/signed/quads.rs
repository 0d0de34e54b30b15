//! The AVX-512 VNNI kernel of the signed types: four blocks per 512-bit vector.

use std::arch::x86_64::*;

use super::{SignedBlock, MAX_BLOCK_BYTES};
use crate::quads::{Q8_0Quad, QUAD};
use crate::x86::{sum_f32x8_n, IntDot};

/// The four blocks at `w` as unsigned bytes (`q + offset`; Q8_0: `w XOR 0x80`) and their
/// scales.
///
/// # Safety
/// The blocks must be readable; AVX-512F/BW must be enabled in the caller.
#[inline(always)]
pub(super) unsafe fn unpack_unsigned<B: SignedBlock>(w: *const u8) -> (__m512i, __m512i, __m512) {
    let (low, high, d_w) = B::unpack_quad(w);
    if B::SIGNED {
        let flip = _mm512_set1_epi8(i8::MIN);
        (
            _mm512_xor_si512(low, flip),
            _mm512_xor_si512(high, flip),
            d_w,
        )
    } else {
        (low, high, d_w)
    }
}

/// The exact i32 dot of four unsigned weight blocks with an activation quad: lanes
/// `4k..4k + 4` sum to block `k`'s `Σ (q − offset)·x`.
///
/// # Safety
/// AVX-512F/VNNI must be enabled in the caller.
#[inline(always)]
pub(super) unsafe fn quad_dot<B: SignedBlock>(
    low: __m512i,
    high: __m512i,
    x: &Q8_0Quad,
) -> __m512i {
    let correction = B::correction_512(_mm512_load_si512(x.neg_sums.as_ptr().cast()));
    let sumi = _mm512_dpbusd_epi32(correction, low, _mm512_load_si512(x.lo.as_ptr().cast()));
    _mm512_dpbusd_epi32(sumi, high, _mm512_load_si512(x.hi.as_ptr().cast()))
}

/// Adds the four weight blocks at `w` times activation quad `quad` of every row in `xs` to
/// `acc`: `vpdpbusd` of the unsigned weights from `−offset · Σ x`, converted, times
/// `d_w · d_x`.
///
/// # Safety
/// The four blocks at `w` and the quads must be readable; AVX-512F/BW/VNNI must be enabled
/// in the caller.
#[inline(always)]
unsafe fn add_quad<B: SignedBlock, const N: usize>(
    acc: &mut [__m512; N],
    w: *const u8,
    xs: &[*const Q8_0Quad; N],
    quad: usize,
) {
    let (low, high, d_w) = unpack_unsigned::<B>(w);
    for r in 0..N {
        let x = &*xs[r].add(quad);
        let sumi = quad_dot::<B>(low, high, x);
        let scale = _mm512_mul_ps(d_w, _mm512_load_ps(x.d.as_ptr()));
        acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sumi), acc[r]);
    }
}

/// A weight row of `nb` blocks of `B` times `N` activation rows of quads: per activation row
/// the accumulator of the even quads plus that of the odd ones (quad `q` goes to `q % 2`).
///
/// # Safety
/// `w` must hold `nb` blocks of `B`, every `xs[r]` `quads_per_row(nb)` quads; the CPU must
/// support AVX-512F/BW/VNNI, enabled in the caller.
#[inline(always)]
unsafe fn accumulate<B: SignedBlock, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: &[*const Q8_0Quad; N],
) -> [__m512; N] {
    let mut even = [_mm512_setzero_ps(); N];
    let mut odd = [_mm512_setzero_ps(); N];
    let quads = nb / QUAD;
    let mut quad = 0;
    while quad + 2 <= quads {
        let w = w.add(quad * QUAD * B::BYTES);
        add_quad::<B, N>(&mut even, w, xs, quad);
        add_quad::<B, N>(&mut odd, w.add(QUAD * B::BYTES), xs, quad + 1);
        quad += 2;
    }
    if quad < quads {
        add_quad::<B, N>(&mut even, w.add(quad * QUAD * B::BYTES), xs, quad);
        quad += 1;
    }
    let rest = nb % QUAD;
    if rest > 0 {
        // The last blocks with zero blocks after them (their activations are zero too).
        let mut tail = [0u8; QUAD * MAX_BLOCK_BYTES];
        let last = w.add(quad * QUAD * B::BYTES);
        std::ptr::copy_nonoverlapping(last, tail.as_mut_ptr(), rest * B::BYTES);
        let acc = if quad % 2 == 0 { &mut even } else { &mut odd };
        add_quad::<B, N>(acc, tail.as_ptr(), xs, quad);
    }
    std::array::from_fn(|r| _mm512_add_ps(even[r], odd[r]))
}

/// Lane sums of `N` accumulators: the two 256-bit halves added, then [`sum_f32x8_n`] (the
/// same additions per accumulator however many there are).
///
/// # Safety
/// AVX-512F must be enabled in the caller.
#[inline(always)]
unsafe fn sums<const N: usize>(acc: [__m512; N]) -> [f32; N] {
    let mut halves = [_mm256_setzero_ps(); N];
    for r in 0..N {
        // The high half through a double view: `vextractf32x8` would need AVX-512DQ.
        let high = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[r]));
        halves[r] = _mm256_add_ps(_mm512_castps512_ps256(acc[r]), _mm256_castpd_ps(high));
    }
    sum_f32x8_n(halves)
}

/// A weight row of `nb` blocks of `B` times `N` activation rows of quads. `E` is only there
/// for the entry-point macro (this is VNNI only).
///
/// # Safety
/// `w` must hold `nb` blocks of `B`, every `xs[r]` `quads_per_row(nb)` quads; the CPU must
/// support AVX-512F/BW/VNNI, enabled in the caller.
#[inline(always)]
pub(super) unsafe fn dot_quads<B: SignedBlock, E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const Q8_0Quad; N],
) -> [f32; N] {
    debug_assert!(E::WIDE_UNSIGNED);
    sums(accumulate::<B, N>(w, nb, &xs))
}
