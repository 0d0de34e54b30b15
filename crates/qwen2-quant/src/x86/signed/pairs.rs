//! The AVX2 kernel of the signed types: two blocks per 256-bit vector (a quad read as two
//! pairs).

use std::arch::x86_64::*;

use super::blocks::pair_scales;
use super::{SignedBlock, MAX_BLOCK_BYTES};
use crate::quads::Q8_0Quad;
use crate::x86::{dot_i8_i8, load_32, sum_f32x8_n, IntDot};

/// The exact i32 dot of a weight pair with half `half` of an activation quad: lanes 0..4 sum
/// to the first block's `Σ (q − offset)·x`, lanes 4..8 to the second's.
///
/// # Safety
/// AVX2 and `E`'s features must be enabled in the caller.
#[inline(always)]
pub(super) unsafe fn pair_dot<B: SignedBlock, E: IntDot>(
    low: __m256i,
    high: __m256i,
    x: &Q8_0Quad,
    half: usize,
) -> __m256i {
    let x_low = load_32(x.lo.as_ptr().add(32 * half).cast());
    let x_high = load_32(x.hi.as_ptr().add(32 * half).cast());
    if B::SIGNED && !E::WIDE_UNSIGNED {
        let sum = dot_i8_i8::<E>(_mm256_setzero_si256(), low, x_low);
        return dot_i8_i8::<E>(sum, high, x_high);
    }
    let (low, high) = if B::SIGNED {
        let flip = _mm256_set1_epi8(i8::MIN);
        (_mm256_xor_si256(low, flip), _mm256_xor_si256(high, flip))
    } else {
        (low, high)
    };
    let neg_sums = _mm256_load_si256(x.neg_sums.as_ptr().add(8 * half).cast());
    E::dot_u8_i8(
        E::dot_u8_i8(B::correction(neg_sums), low, x_low),
        high,
        x_high,
    )
}

/// Adds the weight pair at `w` times half `half` of activation quad `quad` of every row in
/// `xs` to `acc`.
///
/// # Safety
/// The two blocks at `w` and the quads must be readable; AVX2, FMA, F16C and `E`'s features
/// must be enabled in the caller.
#[inline(always)]
unsafe fn add_pair<B: SignedBlock, E: IntDot, const N: usize>(
    acc: &mut [__m256; N],
    w: *const u8,
    xs: &[*const Q8_0Quad; N],
    quad: usize,
    half: usize,
) {
    let (low, high) = B::unpack_pair::<E>(w);
    let d_w = pair_scales::<B>(w);
    for r in 0..N {
        let x = &*xs[r].add(quad);
        let sumi = pair_dot::<B, E>(low, high, x, half);
        let scale = _mm256_mul_ps(d_w, _mm256_load_ps(x.d.as_ptr().add(8 * half)));
        acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sumi), acc[r]);
    }
}

/// A weight row of `nb` blocks of `B` times `N` activation rows of quads: per activation row
/// the accumulator of the even pairs plus that of the odd ones (pair `p`, blocks `2p` and
/// `2p + 1`, goes to `p % 2`).
///
/// # Safety
/// `w` must hold `nb` blocks of `B`, every `xs[r]` `quads_per_row(nb)` quads; the CPU must
/// support `E`'s features, AVX2, FMA and F16C, enabled in the caller.
#[inline(always)]
unsafe fn accumulate<B: SignedBlock, E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: &[*const Q8_0Quad; N],
) -> [__m256; N] {
    let mut even = [_mm256_setzero_ps(); N];
    let mut odd = [_mm256_setzero_ps(); N];
    let pairs = nb / 2;
    let mut pair = 0;
    while pair + 2 <= pairs {
        let quad = w.add(2 * pair * B::BYTES);
        add_pair::<B, E, N>(&mut even, quad, xs, pair / 2, 0);
        add_pair::<B, E, N>(&mut odd, quad.add(2 * B::BYTES), xs, pair / 2, 1);
        pair += 2;
    }
    if pair < pairs {
        add_pair::<B, E, N>(&mut even, w.add(2 * pair * B::BYTES), xs, pair / 2, 0);
        pair += 1;
    }
    if nb % 2 == 1 {
        // The last block pairs with a zero block (its activation half is zero too).
        let mut tail = [0u8; 2 * MAX_BLOCK_BYTES];
        std::ptr::copy_nonoverlapping(w.add((nb - 1) * B::BYTES), tail.as_mut_ptr(), B::BYTES);
        let acc = if pair % 2 == 0 { &mut even } else { &mut odd };
        add_pair::<B, E, N>(acc, tail.as_ptr(), xs, pair / 2, pair % 2);
    }
    std::array::from_fn(|r| _mm256_add_ps(even[r], odd[r]))
}

/// A weight row of `nb` blocks of `B` times `N` activation rows of quads.
///
/// # Safety
/// `w` must hold `nb` blocks of `B`, every `xs[r]` `quads_per_row(nb)` quads; the CPU must
/// support `E`'s features, AVX2, FMA and F16C, enabled in the caller.
#[inline(always)]
pub(super) unsafe fn dot_pairs<B: SignedBlock, E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const Q8_0Quad; N],
) -> [f32; N] {
    sum_f32x8_n(accumulate::<B, E, N>(w, nb, &xs))
}

/// `R` consecutive weight rows (`row_bytes` apart) of `nb` blocks of `B`, one after the other,
/// times one activation row of quads; the rows' accumulators are summed together.
///
/// # Safety
/// The rows must be readable, `x` must hold `quads_per_row(nb)` quads; the CPU must support
/// `E`'s features, AVX2, FMA and F16C, enabled in the caller.
#[inline(always)]
pub(super) unsafe fn dot_pair_rows<B: SignedBlock, E: IntDot, const R: usize>(
    w: *const u8,
    row_bytes: usize,
    nb: usize,
    x: *const Q8_0Quad,
) -> [f32; R] {
    let mut acc = [_mm256_setzero_ps(); R];
    for j in 0..R {
        [acc[j]] = accumulate::<B, E, 1>(w.add(j * row_bytes), nb, &[x]);
    }
    sum_f32x8_n(acc)
}
