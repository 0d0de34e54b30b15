//! AVX2 / VNNI dot products of the 32-element block types (llama.cpp's x86
//! `ggml_vec_dot_q{4_0,4_1,5_0,5_1,8_0}_q8_{0,1}`): per block an exact i32x8 integer dot,
//! converted to f32 and accumulated with `fmadd(d_w · d_x, sumi, acc)`.

use std::arch::x86_64::*;

use super::{
    bits_to_bytes_32, dot_i8_i8, f16_bits_to_f32, load_32, nibbles_32, read_f16, sum_f32x8,
    Avx2Dot, IntDot, VnniDot,
};
use crate::activation::{BlockQ8_0, BlockQ8_1};

/// A block type whose unpacked weights are signed bytes and whose scale `d` is the f16 at
/// offset 0 (Q4_0, Q5_0, Q8_0).
trait SignedBlock {
    /// Bytes per block.
    const BYTES: usize;
    /// The 32 weights of the block at `block` as signed bytes (without the scale).
    ///
    /// # Safety
    /// `block..block + BYTES` must be readable; AVX2 must be enabled in the caller.
    unsafe fn unpack(block: *const u8) -> __m256i;
}

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

struct Q8_0Block;
impl SignedBlock for Q8_0Block {
    const BYTES: usize = 34;
    #[inline(always)]
    unsafe fn unpack(block: *const u8) -> __m256i {
        load_32(block.add(2))
    }
}

struct Q4_0Block;
impl SignedBlock for Q4_0Block {
    const BYTES: usize = 18;
    #[inline(always)]
    unsafe fn unpack(block: *const u8) -> __m256i {
        _mm256_sub_epi8(nibbles_32(block.add(2)), _mm256_set1_epi8(8))
    }
}

struct Q5_0Block;
impl SignedBlock for Q5_0Block {
    const BYTES: usize = 22;
    #[inline(always)]
    unsafe fn unpack(block: *const u8) -> __m256i {
        // nibble | (fifth bit ? 0 : 0xF0) == q − 16 as a signed byte.
        let high = _mm256_andnot_si256(bits_to_bytes_32(block.add(2)), _mm256_set1_epi8(-16));
        _mm256_or_si256(nibbles_32(block.add(6)), high)
    }
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

/// Signed-weight blocks · Q8_0 activation rows.
///
/// # Safety
/// `w` must hold `nb` blocks of `B`, every `xs[r]` `nb` activation blocks; the CPU must
/// support `E`'s features, AVX2, FMA and F16C, enabled in the caller.
#[inline(always)]
unsafe fn dot_signed<B: SignedBlock, E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const BlockQ8_0; N],
) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    for ib in 0..nb {
        let block = w.add(ib * B::BYTES);
        let d_w = read_f16(block);
        let q_w = B::unpack(block);
        for r in 0..N {
            let act = &*xs[r].add(ib);
            let q_x = load_32(act.qs.as_ptr().cast());
            let sumi = dot_i8_i8::<E>(_mm256_setzero_si256(), q_w, q_x);
            let scale = _mm256_set1_ps(d_w * f16_bits_to_f32(act.d.to_bits()));
            acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sumi), acc[r]);
        }
    }
    let mut sums = [0f32; N];
    for r in 0..N {
        sums[r] = sum_f32x8(acc[r]);
    }
    sums
}

/// Unsigned-weight blocks with minimum · Q8_1 activation rows: `Σ d_w d_x sumi + m s_x`.
///
/// # Safety
/// As [`dot_signed`].
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
unsafe fn q8_0_kernel<E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const BlockQ8_0; N],
) -> [f32; N] {
    dot_signed::<Q8_0Block, E, N>(w, nb, xs)
}

#[inline(always)]
unsafe fn q4_0_kernel<E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const BlockQ8_0; N],
) -> [f32; N] {
    dot_signed::<Q4_0Block, E, N>(w, nb, xs)
}

#[inline(always)]
unsafe fn q5_0_kernel<E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const BlockQ8_0; N],
) -> [f32; N] {
    dot_signed::<Q5_0Block, E, N>(w, nb, xs)
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
    /// Q8_0 weights · Q8_0 activations.
    q8_0, BlockQ8_0, 34, q8_0_kernel
);
super::simd_row_kernels!(
    /// Q4_0 weights · Q8_0 activations.
    q4_0, BlockQ8_0, 18, q4_0_kernel
);
super::simd_row_kernels!(
    /// Q5_0 weights · Q8_0 activations.
    q5_0, BlockQ8_0, 22, q5_0_kernel
);
super::simd_row_kernels!(
    /// Q4_1 weights · Q8_1 activations.
    q4_1, BlockQ8_1, 20, q4_1_kernel
);
super::simd_row_kernels!(
    /// Q5_1 weights · Q8_1 activations.
    q5_1, BlockQ8_1, 24, q5_1_kernel
);
