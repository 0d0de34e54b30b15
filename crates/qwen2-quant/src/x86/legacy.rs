//! AVX2 / VNNI dot products of the 32-element block types with a minimum (llama.cpp's x86
//! `ggml_vec_dot_q{4_1,5_1}_q8_1`): per block an exact i32x8 integer dot, converted to f32 and
//! accumulated with `fmadd(d_w · d_x, sumi, acc)`, plus `m · s` per block. The signed types
//! are in [`signed`](super::signed).

use std::arch::x86_64::*;

use super::{
    bits_to_bytes_32, f16_bits_to_f32, load_32, nibbles_32, read_f16, sum_f32x8, Avx2Dot, IntDot,
    VnniDot,
};
use crate::activation::BlockQ8_1;

/// A block type with a minimum, `value = d · q + m`, q unsigned; `d` at offset 0, `m` at 2
/// (Q4_1, Q5_1).
trait UnsignedBlock {
    /// Bytes per block.
    const BYTES: usize;
    /// The 32 unsigned quants of the block at `block`.
    ///
    /// # Safety
    /// `block..block + BYTES` must be readable; AVX2 must be enabled in the caller.
    unsafe fn unpack(block: *const u8) -> __m256i;
}

struct Q4_1Block;
impl UnsignedBlock for Q4_1Block {
    const BYTES: usize = 20;
    #[inline(always)]
    unsafe fn unpack(block: *const u8) -> __m256i {
        nibbles_32(block.add(4))
    }
}

struct Q5_1Block;
impl UnsignedBlock for Q5_1Block {
    const BYTES: usize = 24;
    #[inline(always)]
    unsafe fn unpack(block: *const u8) -> __m256i {
        let high = _mm256_and_si256(bits_to_bytes_32(block.add(4)), _mm256_set1_epi8(0x10));
        _mm256_or_si256(nibbles_32(block.add(8)), high)
    }
}

/// Unsigned-weight blocks with minimum · Q8_1 activation rows: `Σ d_w d_x sumi + m s_x`.
///
/// # Safety
/// `w` must hold `nb` blocks of `B`, every `xs[r]` `nb` activation blocks; the CPU must
/// support `E`'s features, AVX2, FMA and F16C, enabled in the caller.
#[inline(always)]
unsafe fn dot_unsigned<B: UnsignedBlock, E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const BlockQ8_1; N],
) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    let mut min_sums = [0f32; N];
    for ib in 0..nb {
        let block = w.add(ib * B::BYTES);
        let d_w = read_f16(block);
        let m_w = read_f16(block.add(2));
        let q_w = B::unpack(block);
        for r in 0..N {
            let act = &*xs[r].add(ib);
            let q_x = load_32(act.qs.as_ptr().cast());
            let sumi = E::dot_u8_i8(_mm256_setzero_si256(), q_w, q_x);
            let scale = _mm256_set1_ps(d_w * f16_bits_to_f32(act.d.to_bits()));
            acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sumi), acc[r]);
            min_sums[r] += m_w * f16_bits_to_f32(act.s.to_bits());
        }
    }
    let mut sums = [0f32; N];
    for r in 0..N {
        sums[r] = sum_f32x8(acc[r]) + min_sums[r];
    }
    sums
}

#[inline(always)]
unsafe fn q4_1_kernel<E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const BlockQ8_1; N],
) -> [f32; N] {
    dot_unsigned::<Q4_1Block, E, N>(w, nb, xs)
}

#[inline(always)]
unsafe fn q5_1_kernel<E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const BlockQ8_1; N],
) -> [f32; N] {
    dot_unsigned::<Q5_1Block, E, N>(w, nb, xs)
}

super::simd_row_kernels!(
    /// Q4_1 weights · Q8_1 activations.
    q4_1, BlockQ8_1, std::convert::identity, 20, q4_1_kernel
);
super::simd_row_kernels!(
    /// Q5_1 weights · Q8_1 activations.
    q5_1, BlockQ8_1, std::convert::identity, 24, q5_1_kernel
);
