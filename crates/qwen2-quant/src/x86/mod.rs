//! x86-64 SIMD kernels: AVX2 (`vpmaddubsw` + `vpmaddwd`) and AVX-512 VNNI (`vpdpbusd` /
//! `vpdpwssd` on 256-bit registers, AVX-512BW byte masks).
//!
//! Every kernel is written once, generic over [`IntDot`] (the integer multiply-accumulate
//! primitives) and over `N`, the number of activation rows multiplied by one weight row at once
//! (each weight block is loaded and unpacked once per `N` activation rows). The
//! `#[inline(always)]` generic bodies are instantiated inside `#[target_feature]` entry points
//! (see [`entry`]), so the intrinsics compile with the entry point's features. Per activation
//! row the f32 operations are the same for every `N`, so the results do not depend on how rows
//! are grouped.

// Kernels index several parallel per-row (or per-element) arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

mod entry;
mod k_quants;
mod legacy;
pub(crate) mod quantize;
mod signed;

use std::arch::x86_64::*;

pub(crate) use entry::simd_row_kernels;
pub(crate) use k_quants::{q2_k, q3_k, q4_k, q5_k, q6_k};
pub(crate) use legacy::{q4_1, q5_1};
pub(crate) use signed::{q4_0, q5_0, q8_0};

/// Integer multiply-accumulate primitives; all results are exact (no saturation for the
/// operand ranges the kernels use: unsigned bytes ≤ 128 times signed bytes in −127..=127).
pub(crate) trait IntDot {
    /// Whether [`dot_u8_i8`](IntDot::dot_u8_i8) is exact for every unsigned byte (0..=255)
    /// times −127..=127; otherwise only for unsigned bytes up to 128 (`vpmaddubsw` saturates
    /// its 16-bit pair sums).
    const WIDE_UNSIGNED: bool;
    /// `acc[i] + Σ_{k<4} u[4i+k] · s[4i+k]` (u unsigned bytes, s signed bytes).
    ///
    /// # Safety
    /// The CPU must support the features of the implementing path.
    unsafe fn dot_u8_i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
    /// `acc[i] + a[2i]·b[2i] + a[2i+1]·b[2i+1]` on signed 16-bit lanes.
    ///
    /// # Safety
    /// The CPU must support the features of the implementing path.
    unsafe fn madd_i16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
    /// `v | byte` in the bytes `i` where bit `i` of `bits` is set, `v` elsewhere.
    ///
    /// # Safety
    /// The CPU must support the features of the implementing path.
    unsafe fn or_where_bits(v: __m256i, bits: u32, byte: __m256i) -> __m256i;
}

/// [`IntDot`] with AVX2 `maddubs` + `madd` + `add`.
pub(crate) struct Avx2Dot;

impl IntDot for Avx2Dot {
    const WIDE_UNSIGNED: bool = false;

    #[inline(always)]
    unsafe fn dot_u8_i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(u, s);
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    #[inline(always)]
    unsafe fn madd_i16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }

    #[inline(always)]
    unsafe fn or_where_bits(v: __m256i, bits: u32, byte: __m256i) -> __m256i {
        _mm256_or_si256(v, _mm256_and_si256(bits_to_bytes(bits), byte))
    }
}

/// [`IntDot`] with AVX-512 VNNI (256-bit forms, avx512vl).
pub(crate) struct VnniDot;

impl IntDot for VnniDot {
    const WIDE_UNSIGNED: bool = true;

    #[inline(always)]
    unsafe fn dot_u8_i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }

    #[inline(always)]
    unsafe fn madd_i16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, a, b)
    }

    #[inline(always)]
    unsafe fn or_where_bits(v: __m256i, bits: u32, byte: __m256i) -> __m256i {
        // A zero-masked move and an or (one `vpternlogd` with the `and` producing `v`).
        _mm256_or_si256(v, _mm256_maskz_mov_epi8(_cvtu32_mask32(bits), byte))
    }
}

/// `((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7))` for four vectors at once: per vector
/// exactly [`sum_f32x8`]'s additions.
///
/// # Safety
/// AVX must be enabled in the caller.
#[inline(always)]
pub(crate) unsafe fn sum_f32x8_4(v: [__m256; 4]) -> [f32; 4] {
    // [v0 halves summed | v1 halves summed], [v2 | v3].
    let x01 = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(v[0], v[1]),
        _mm256_permute2f128_ps::<0x31>(v[0], v[1]),
    );
    let x23 = _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(v[2], v[3]),
        _mm256_permute2f128_ps::<0x31>(v[2], v[3]),
    );
    // Per 128-bit lane: [h0 + h2, h1 + h3] of v0 (v1) then of v2 (v3).
    let pairs = _mm256_add_ps(
        _mm256_shuffle_ps::<0b01_00_01_00>(x01, x23),
        _mm256_shuffle_ps::<0b11_10_11_10>(x01, x23),
    );
    let sums = _mm256_add_ps(
        _mm256_shuffle_ps::<0b10_00_10_00>(pairs, pairs),
        _mm256_shuffle_ps::<0b11_01_11_01>(pairs, pairs),
    );
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sums);
    [lanes[0], lanes[4], lanes[1], lanes[5]]
}

/// Sums of `N` vectors: [`sum_f32x8_4`] per group of four, [`sum_f32x8`] for the rest (the
/// same additions per vector either way).
///
/// # Safety
/// AVX must be enabled in the caller.
#[inline(always)]
pub(crate) unsafe fn sum_f32x8_n<const N: usize>(v: [__m256; N]) -> [f32; N] {
    let mut sums = [0f32; N];
    let mut i = 0;
    while i + 4 <= N {
        let four = sum_f32x8_4([v[i], v[i + 1], v[i + 2], v[i + 3]]);
        sums[i..i + 4].copy_from_slice(&four);
        i += 4;
    }
    for i in i..N {
        sums[i] = sum_f32x8(v[i]);
    }
    sums
}

/// 32 bytes at `p` (unaligned).
///
/// # Safety
/// `p..p + 32` must be readable; AVX2 must be enabled in the caller.
#[inline(always)]
pub(crate) unsafe fn load_32(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p.cast())
}

/// f16 bits to f32 with F16C.
///
/// # Safety
/// F16C must be enabled in the caller.
#[inline(always)]
pub(crate) unsafe fn f16_bits_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// The little-endian f16 at `p`, as f32.
///
/// # Safety
/// `p..p + 2` must be readable; F16C must be enabled in the caller.
#[inline(always)]
pub(crate) unsafe fn read_f16(p: *const u8) -> f32 {
    f16_bits_to_f32(u16::from_le(p.cast::<u16>().read_unaligned()))
}

/// Sum of the 8 lanes.
///
/// # Safety
/// AVX must be enabled in the caller.
#[inline(always)]
pub(crate) unsafe fn sum_f32x8(v: __m256) -> f32 {
    let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)))
}

/// The 32 nibbles of 16 bytes at `p` as bytes: low nibbles in bytes 0..16, high in 16..32.
///
/// # Safety
/// `p..p + 16` must be readable; AVX2 must be enabled in the caller.
#[inline(always)]
pub(crate) unsafe fn nibbles_32(p: *const u8) -> __m256i {
    let packed = _mm_loadu_si128(p.cast());
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// Byte `i` is `0xFF` where bit `i` of the little-endian u32 at `p` is set, else 0
/// (`bytes_from_bits_32`).
///
/// # Safety
/// `p..p + 4` must be readable; AVX2 must be enabled in the caller.
#[inline(always)]
pub(crate) unsafe fn bits_to_bytes_32(p: *const u8) -> __m256i {
    bits_to_bytes(read_u32(p))
}

/// The little-endian u32 at `p`.
///
/// # Safety
/// `p..p + 4` must be readable.
#[inline(always)]
pub(crate) unsafe fn read_u32(p: *const u8) -> u32 {
    u32::from_le(p.cast::<u32>().read_unaligned())
}

/// Byte `i` is `0xFF` where bit `i` of `bits` is set, else 0.
///
/// # Safety
/// AVX2 must be enabled in the caller.
#[inline(always)]
pub(crate) unsafe fn bits_to_bytes(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let with_other_bits = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_cmpeq_epi8(with_other_bits, _mm256_set1_epi64x(-1))
}

/// `Σ x·y` per group of 4 bytes of two signed byte vectors (values −128..=127 times
/// −127..=127), added to `acc` (`mul_sum_i8_pairs` with the sign trick).
///
/// # Safety
/// The CPU must support `E`'s features and AVX2.
#[inline(always)]
pub(crate) unsafe fn dot_i8_i8<E: IntDot>(acc: __m256i, x: __m256i, y: __m256i) -> __m256i {
    E::dot_u8_i8(acc, _mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}
