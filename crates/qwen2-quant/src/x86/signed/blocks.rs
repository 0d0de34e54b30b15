//! The unpacking of Q8_0, Q4_0 and Q5_0 blocks for the pair (AVX2) and quad (AVX-512) kernels.

use std::arch::x86_64::*;

use super::SignedBlock;
use crate::x86::{read_u32, IntDot};

/// The 16 bytes at `p` in the low 128-bit lane, the 16 at `p + stride` in the high one.
///
/// # Safety
/// Both ranges must be readable; AVX must be enabled in the caller.
#[inline(always)]
unsafe fn load_lanes_256(p: *const u8, stride: usize) -> __m256i {
    _mm256_loadu2_m128i(p.add(stride).cast(), p.cast())
}

/// The 16 bytes at `p + k · stride` in 128-bit lane `k` of four.
///
/// # Safety
/// The ranges must be readable; AVX-512F must be enabled in the caller.
#[inline(always)]
unsafe fn load_lanes_512(p: *const u8, stride: usize) -> __m512i {
    let v = _mm512_castsi128_si512(_mm_loadu_si128(p.cast()));
    let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(p.add(stride).cast()));
    let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(p.add(2 * stride).cast()));
    _mm512_inserti32x4::<3>(v, _mm_loadu_si128(p.add(3 * stride).cast()))
}

/// Low nibbles (elements 0..16 of each block) and high nibbles (16..32).
///
/// # Safety
/// AVX2 must be enabled in the caller.
#[inline(always)]
unsafe fn split_nibbles_256(packed: __m256i) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0x0F);
    (
        _mm256_and_si256(packed, m4),
        _mm256_and_si256(_mm256_srli_epi16::<4>(packed), m4),
    )
}

/// [`split_nibbles_256`] on 512 bits.
///
/// # Safety
/// AVX-512F/BW must be enabled in the caller.
#[inline(always)]
unsafe fn split_nibbles_512(packed: __m512i) -> (__m512i, __m512i) {
    let m4 = _mm512_set1_epi8(0x0F);
    (
        _mm512_and_si512(packed, m4),
        _mm512_and_si512(_mm512_srli_epi16::<4>(packed), m4),
    )
}

/// The little-endian u16 at `p`.
///
/// # Safety
/// `p..p + 2` must be readable.
#[inline(always)]
unsafe fn read_u16(p: *const u8) -> u16 {
    u16::from_le(p.cast::<u16>().read_unaligned())
}

/// The f16 scales of the two blocks at `w` as f32, the first block's in lanes 0..4.
///
/// # Safety
/// Both blocks must be readable; AVX2 and F16C must be enabled in the caller.
#[inline(always)]
pub(super) unsafe fn pair_scales<B: SignedBlock>(w: *const u8) -> __m256 {
    let bits = u32::from(read_u16(w)) | (u32::from(read_u16(w.add(B::BYTES))) << 16);
    let spread = _mm_shuffle_epi8(
        _mm_cvtsi32_si128(bits as i32),
        _mm_set_epi8(3, 2, 3, 2, 3, 2, 3, 2, 1, 0, 1, 0, 1, 0, 1, 0),
    );
    _mm256_cvtph_ps(spread)
}

/// The f16 scales of the four blocks at `w` as f32, block `k`'s in lanes `4k..4k + 4`.
///
/// # Safety
/// The blocks must be readable; AVX-512F must be enabled in the caller.
#[inline(always)]
unsafe fn quad_scales<B: SignedBlock>(w: *const u8) -> __m512 {
    let mut bits = 0u64;
    for k in 0..4 {
        bits |= u64::from(read_u16(w.add(k * B::BYTES))) << (16 * k);
    }
    let scales = _mm_cvtph_ps(_mm_cvtsi64_si128(bits as i64));
    let lanes = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(scales))
}

/// The bytes of a quad of `BYTES` (65..=96) bytes at `w`: its first 64, and its last 32 (the
/// quad byte `o ≥ 64` is byte `o + 32 − BYTES` of the second vector: two-source permute index
/// `o + 96 − BYTES`).
///
/// # Safety
/// `w..w + BYTES` must be readable; AVX-512F must be enabled in the caller.
#[inline(always)]
unsafe fn load_quad<const BYTES: usize>(w: *const u8) -> (__m512i, __m512i) {
    (
        _mm512_loadu_si512(w.cast()),
        _mm512_castsi256_si512(_mm256_loadu_si256(w.add(BYTES - 32).cast())),
    )
}

/// 64 bytes gathered from a quad loaded by [`load_quad`] with a [`quad_table`].
///
/// # Safety
/// AVX-512VBMI must be enabled in the caller.
#[inline(always)]
unsafe fn gather(quad: (__m512i, __m512i), table: &[u8; 64]) -> __m512i {
    _mm512_permutex2var_epi8(quad.0, _mm512_loadu_si512(table.as_ptr().cast()), quad.1)
}

/// The byte-permute indices (see [`load_quad`]) that put quad byte `offsets[i]` of a quad of
/// `bytes` bytes in output byte `i`.
const fn quad_table(bytes: usize, offsets: [usize; 64]) -> [u8; 64] {
    let mut table = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let o = offsets[i];
        table[i] = if o < 64 { o } else { o + 96 - bytes } as u8;
        i += 1;
    }
    table
}

/// Offsets putting 16 bytes of block `k` (of `block` bytes) in 128-bit lane `k`: byte `j` of
/// the lane from `start + j / per_byte` (`per_byte` 1: 16 consecutive bytes; 8: two bytes,
/// each spread over eight).
const fn lane_offsets(block: usize, start: usize, per_byte: usize) -> [usize; 64] {
    let mut offsets = [0; 64];
    let mut i = 0;
    while i < 64 {
        offsets[i] = block * (i / 16) + start + (i % 16) / per_byte;
        i += 1;
    }
    offsets
}

/// Offsets putting block `k`'s f16 scale (its first two bytes) in words `4k..4k + 4`.
const fn scale_offsets(block: usize) -> [usize; 64] {
    let mut offsets = [0; 64];
    let mut i = 0;
    while i < 64 {
        offsets[i] = block * ((i / 8) % 4) + i % 2;
        i += 1;
    }
    offsets
}

/// The f16 scales gathered by a [`scale_offsets`] table, as f32 (block `k`'s in lanes
/// `4k..4k + 4`).
///
/// # Safety
/// AVX-512F/VBMI must be enabled in the caller.
#[inline(always)]
unsafe fn gathered_scales(quad: (__m512i, __m512i), table: &[u8; 64]) -> __m512 {
    _mm512_cvtph_ps(_mm512_castsi512_si256(gather(quad, table)))
}

/// Q8_0: `d`, then 32 signed weights.
pub(super) struct Q8_0Block;

impl SignedBlock for Q8_0Block {
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn unpack_pair<E: IntDot>(w: *const u8) -> (__m256i, __m256i) {
        (
            load_lanes_256(w.add(2), Self::BYTES),
            load_lanes_256(w.add(18), Self::BYTES),
        )
    }
    #[inline(always)]
    unsafe fn unpack_quad(w: *const u8) -> (__m512i, __m512i, __m512) {
        // 136 bytes: more than one two-source permute reaches, so lane loads.
        (
            load_lanes_512(w.add(2), Self::BYTES),
            load_lanes_512(w.add(18), Self::BYTES),
            quad_scales::<Self>(w),
        )
    }
    #[inline(always)]
    unsafe fn correction(neg_sums: __m256i) -> __m256i {
        _mm256_slli_epi32::<7>(neg_sums)
    }
    #[inline(always)]
    unsafe fn correction_512(neg_sums: __m512i) -> __m512i {
        _mm512_slli_epi32::<7>(neg_sums)
    }
}

/// Q4_0: `d`, then 16 bytes of nibbles (weights `nibble − 8`).
pub(super) struct Q4_0Block;

/// Q4_0 quad (72 bytes): the 16 `qs` bytes of block `k` in lane `k`.
static Q4_0_QS: [u8; 64] = quad_table(72, lane_offsets(18, 2, 1));
/// Q4_0 quad: words `4k..4k + 4` are block `k`'s `d`.
static Q4_0_D: [u8; 64] = quad_table(72, scale_offsets(18));

impl SignedBlock for Q4_0Block {
    const BYTES: usize = 18;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn unpack_pair<E: IntDot>(w: *const u8) -> (__m256i, __m256i) {
        split_nibbles_256(load_lanes_256(w.add(2), Self::BYTES))
    }
    #[inline(always)]
    unsafe fn unpack_quad(w: *const u8) -> (__m512i, __m512i, __m512) {
        let quad = load_quad::<72>(w);
        let (low, high) = split_nibbles_512(gather(quad, &Q4_0_QS));
        (low, high, gathered_scales(quad, &Q4_0_D))
    }
    #[inline(always)]
    unsafe fn correction(neg_sums: __m256i) -> __m256i {
        _mm256_slli_epi32::<3>(neg_sums)
    }
    #[inline(always)]
    unsafe fn correction_512(neg_sums: __m512i) -> __m512i {
        _mm512_slli_epi32::<3>(neg_sums)
    }
}

/// Q5_0: `d`, `qh` (bit `i` is weight `i`'s fifth bit), 16 bytes of nibbles (weights
/// `q − 16`).
pub(super) struct Q5_0Block;

/// Q5_0 quad (88 bytes): the 16 `qs` bytes of block `k` in lane `k`.
static Q5_0_QS: [u8; 64] = quad_table(88, lane_offsets(22, 6, 1));
/// Q5_0 quad: byte `j` of lane `k` is `qh` byte `j / 8` of block `k` (weights 0..16).
static Q5_0_LOW_BITS: [u8; 64] = quad_table(88, lane_offsets(22, 2, 8));
/// As [`Q5_0_LOW_BITS`] for weights 16..32 (`qh` bytes 2, 3).
static Q5_0_HIGH_BITS: [u8; 64] = quad_table(88, lane_offsets(22, 4, 8));
/// Q5_0 quad: words `4k..4k + 4` are block `k`'s `d`.
static Q5_0_D: [u8; 64] = quad_table(88, scale_offsets(22));

impl SignedBlock for Q5_0Block {
    const BYTES: usize = 22;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn unpack_pair<E: IntDot>(w: *const u8) -> (__m256i, __m256i) {
        let (low, high) = split_nibbles_256(load_lanes_256(w.add(6), Self::BYTES));
        let (a, b) = (read_u32(w.add(2)), read_u32(w.add(Self::BYTES + 2)));
        let sixteen = _mm256_set1_epi8(0x10);
        (
            E::or_where_bits(low, (a & 0xFFFF) | (b << 16), sixteen),
            E::or_where_bits(high, (a >> 16) | (b & 0xFFFF_0000), sixteen),
        )
    }
    #[inline(always)]
    unsafe fn unpack_quad(w: *const u8) -> (__m512i, __m512i, __m512) {
        let quad = load_quad::<88>(w);
        let packed = gather(quad, &Q5_0_QS);
        let bit = _mm512_set1_epi64(0x8040_2010_0804_0201u64 as i64);
        let (sixteen, m4) = (_mm512_set1_epi8(0x10), _mm512_set1_epi8(0x0F));
        // (nibbles & 0x0F) | fifth bit · 16: a zero-masked move and one ternary-logic op.
        let merge = |nibbles: __m512i, bits: &[u8; 64]| {
            let set = _mm512_test_epi8_mask(gather(quad, bits), bit);
            let fifth = _mm512_maskz_mov_epi8(set, sixteen);
            _mm512_ternarylogic_epi32::<0xEA>(nibbles, m4, fifth)
        };
        (
            merge(packed, &Q5_0_LOW_BITS),
            merge(_mm512_srli_epi16::<4>(packed), &Q5_0_HIGH_BITS),
            gathered_scales(quad, &Q5_0_D),
        )
    }
    #[inline(always)]
    unsafe fn correction(neg_sums: __m256i) -> __m256i {
        _mm256_slli_epi32::<4>(neg_sums)
    }
    #[inline(always)]
    unsafe fn correction_512(neg_sums: __m512i) -> __m512i {
        _mm512_slli_epi32::<4>(neg_sums)
    }
}
