//! AVX2 / VNNI dot products of the k-quants with Q8_K (llama.cpp's x86
//! `ggml_vec_dot_q{2,3,4,5,6}_K_q8_K`): per 32 weights `maddubs(q_unsigned, y)` then a
//! multiply-add of the 16-bit pair sums with the group scales into i32 lanes; offsets
//! (Q3_K's −4, Q6_K's −32) are folded in exactly as `−offset · Σ scale · bsum`, and the
//! minimums of Q2_K/Q4_K/Q5_K as a separate `dmin · Σ min · bsum` accumulator, as llama.cpp.

use std::arch::x86_64::*;

use super::{load_32, read_f16, sum_f32x8, Avx2Dot, IntDot, VnniDot};
use crate::activation::BlockQ8K;

/// Per-row accumulators: `d · isum` lanes and the `dmin · summs` lanes.
struct Accumulators<const N: usize> {
    scaled: [__m256; N],
    mins: [__m256; N],
}

impl<const N: usize> Accumulators<N> {
    /// # Safety
    /// AVX must be enabled in the caller.
    #[inline(always)]
    unsafe fn new() -> Self {
        Accumulators {
            scaled: [_mm256_setzero_ps(); N],
            mins: [_mm256_setzero_ps(); N],
        }
    }

    /// `Σ scaled − Σ mins` per row.
    ///
    /// # Safety
    /// AVX must be enabled in the caller.
    #[inline(always)]
    unsafe fn finish(&self) -> [f32; N] {
        let mut sums = [0f32; N];
        for r in 0..N {
            sums[r] = sum_f32x8(self.scaled[r]) - sum_f32x8(self.mins[r]);
        }
        sums
    }
}

/// The activation block `ib` of each row.
///
/// # Safety
/// Every `xs[r]` must point to at least `ib + 1` blocks.
#[inline(always)]
unsafe fn act_blocks<'a, const N: usize>(
    xs: &[*const BlockQ8K; N],
    ib: usize,
) -> [&'a BlockQ8K; N] {
    // SAFETY: guaranteed by the caller.
    std::array::from_fn(|r| unsafe { &*xs[r].add(ib) })
}

/// `sumi[r] += (q · y_r[offset..offset + 32]) ⊙ scales` for every row.
///
/// # Safety
/// AVX2 and `E`'s features must be enabled in the caller.
#[inline(always)]
unsafe fn accumulate<E: IntDot, const N: usize>(
    sumi: &mut [__m256i; N],
    acts: &[&BlockQ8K; N],
    offset: usize,
    q: __m256i,
    scales: __m256i,
) {
    for r in 0..N {
        let y = load_32(acts[r].qs.as_ptr().add(offset).cast());
        sumi[r] = E::madd_i16(sumi[r], _mm256_maddubs_epi16(q, y), scales);
    }
}

/// The 16 `bsums` of an activation block as 16-bit lanes.
///
/// # Safety
/// AVX must be enabled in the caller.
#[inline(always)]
unsafe fn bsums(act: &BlockQ8K) -> __m256i {
    _mm256_loadu_si256(act.bsums.as_ptr().cast())
}

/// The 16-bit scale vector for the 16-element groups `g` (lanes 0..8) and `g + 1` (lanes
/// 8..16), from 16 signed byte scales.
///
/// # Safety
/// AVX2 must be enabled in the caller.
#[inline(always)]
unsafe fn scale_pair(scales: __m128i, g: usize) -> __m256i {
    let low = 0x0101_0101_0101_0101u64.wrapping_mul(g as u64) as i64;
    let high = 0x0101_0101_0101_0101u64.wrapping_mul(g as u64 + 1) as i64;
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, _mm_set_epi64x(high, low)))
}

/// The little-endian u32 at `p`.
///
/// # Safety
/// `p..p + 4` must be readable.
#[inline(always)]
unsafe fn read_u32(p: *const u8) -> u32 {
    u32::from_le(p.cast::<u32>().read_unaligned())
}

/// `−k · scales` on 16-bit lanes, for folding an offset `−k · Σ bsum · scale` into `sumi`.
///
/// # Safety
/// AVX2 must be enabled in the caller.
#[inline(always)]
unsafe fn negated_scales<const SHIFT: i32>(scales: __m128i) -> __m256i {
    _mm256_sub_epi16(
        _mm256_setzero_si256(),
        _mm256_slli_epi16::<SHIFT>(_mm256_cvtepi8_epi16(scales)),
    )
}

/// Q2_K: q in 0..=3, scale `sc & 15`, min `sc >> 4` per 16.
#[inline(always)]
unsafe fn q2_k_kernel<E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const BlockQ8K; N],
) -> [f32; N] {
    let mut acc = Accumulators::<N>::new();
    let m4 = _mm_set1_epi8(0x0F);
    for ib in 0..nb {
        let block = w.add(ib * 84);
        let packed = _mm_loadu_si128(block.cast());
        let scales = _mm_and_si128(packed, m4);
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(packed), m4));
        let (d, dmin) = (read_f16(block.add(80)), read_f16(block.add(82)));
        let acts = act_blocks(&xs, ib);
        let mut sumi = [_mm256_setzero_si256(); N];
        for half in 0..2 {
            let bits = load_32(block.add(16 + 32 * half));
            let q = two_bit_fields(bits);
            for (k, &qk) in q.iter().enumerate() {
                let pair = scale_pair(scales, 8 * half + 2 * k);
                accumulate::<E, N>(&mut sumi, &acts, 128 * half + 32 * k, qk, pair);
            }
        }
        for r in 0..N {
            let summs = _mm256_madd_epi16(mins, bsums(acts[r]));
            let d_all = _mm256_set1_ps(acts[r].d * d);
            let d_min = _mm256_set1_ps(acts[r].d * dmin);
            acc.scaled[r] = _mm256_fmadd_ps(d_all, _mm256_cvtepi32_ps(sumi[r]), acc.scaled[r]);
            acc.mins[r] = _mm256_fmadd_ps(d_min, _mm256_cvtepi32_ps(summs), acc.mins[r]);
        }
    }
    acc.finish()
}

/// The four 2-bit fields of every byte of `bits` (bits 0–1, 2–3, 4–5, 6–7), each as bytes
/// 0..=3: the quant layout Q2_K and Q3_K share.
///
/// # Safety
/// AVX2 must be enabled in the caller.
#[inline(always)]
unsafe fn two_bit_fields(bits: __m256i) -> [__m256i; 4] {
    let m3 = _mm256_set1_epi8(3);
    [
        _mm256_and_si256(bits, m3),
        _mm256_and_si256(_mm256_srli_epi16::<2>(bits), m3),
        _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m3),
        _mm256_and_si256(_mm256_srli_epi16::<6>(bits), m3),
    ]
}

/// The 16 signed Q3_K scales (`−32..=31`) from their 12 packed bytes at `p`, as bytes.
///
/// # Safety
/// `p..p + 12` must be readable; SSE2 must be enabled in the caller.
#[inline(always)]
unsafe fn q3_k_scales(p: *const u8) -> __m128i {
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let (a0, a1, high) = (read_u32(p), read_u32(p.add(4)), read_u32(p.add(8)));
    let s0 = (a0 & LOW4) | ((high & LOW2) << 4);
    let s1 = (a1 & LOW4) | (((high >> 2) & LOW2) << 4);
    let s2 = ((a0 >> 4) & LOW4) | (((high >> 4) & LOW2) << 4);
    let s3 = ((a1 >> 4) & LOW4) | (((high >> 6) & LOW2) << 4);
    let unsigned = _mm_set_epi32(s3 as i32, s2 as i32, s1 as i32, s0 as i32);
    _mm_sub_epi8(unsigned, _mm_set1_epi8(32))
}

/// Q3_K: q = low2 + 4·hbit − 4, signed 6-bit scales per 16.
#[inline(always)]
unsafe fn q3_k_kernel<E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const BlockQ8K; N],
) -> [f32; N] {
    let mut acc = Accumulators::<N>::new();
    let four = _mm256_set1_epi8(4);
    for ib in 0..nb {
        let block = w.add(ib * 110);
        let scales = q3_k_scales(block.add(96));
        let offset_scales = negated_scales::<2>(scales);
        let d = read_f16(block.add(108));
        let hbits = load_32(block);
        let mut high_mask = _mm256_set1_epi8(1);
        let acts = act_blocks(&xs, ib);
        let mut sumi = [_mm256_setzero_si256(); N];
        for half in 0..2 {
            let bits = load_32(block.add(32 + 32 * half));
            let low = two_bit_fields(bits);
            for (k, &low_k) in low.iter().enumerate() {
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(hbits, high_mask), high_mask);
                high_mask = _mm256_slli_epi16::<1>(high_mask);
                let q = _mm256_or_si256(low_k, _mm256_and_si256(set, four));
                let pair = scale_pair(scales, 8 * half + 2 * k);
                accumulate::<E, N>(&mut sumi, &acts, 128 * half + 32 * k, q, pair);
            }
        }
        for r in 0..N {
            let total = E::madd_i16(sumi[r], bsums(acts[r]), offset_scales);
            let d_all = _mm256_set1_ps(d * acts[r].d);
            acc.scaled[r] = _mm256_fmadd_ps(d_all, _mm256_cvtepi32_ps(total), acc.scaled[r]);
        }
    }
    acc.finish()
}

/// The 8 scales (bytes 0..8) and 8 mins (bytes 8..16) of a Q4_K/Q5_K block from their 12
/// packed bytes at `p` (llama.cpp's `utmp` / `kmask` unpacking).
///
/// # Safety
/// `p..p + 12` must be readable; SSE2 must be enabled in the caller.
#[inline(always)]
unsafe fn k4_scales_mins(p: *const u8) -> __m128i {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let (u0, u1, u2) = (read_u32(p), read_u32(p.add(4)), read_u32(p.add(8)));
    let scales_low = u0 & LOW6;
    let scales_high = (u2 & LOW4) | (((u0 >> 6) & LOW2) << 4);
    let mins_low = u1 & LOW6;
    let mins_high = ((u2 >> 4) & LOW4) | (((u1 >> 6) & LOW2) << 4);
    _mm_set_epi32(
        mins_high as i32,
        mins_low as i32,
        scales_high as i32,
        scales_low as i32,
    )
}

/// Shared tail of Q4_K / Q5_K: 8 unsigned 32-weight vectors with one scale each, mins per 32.
///
/// # Safety
/// `block` must point to a Q4_K/Q5_K block (its first 16 bytes are read); AVX2, FMA, F16C and
/// `E`'s features must be enabled in the caller.
#[inline(always)]
unsafe fn scale_min_32<E: IntDot, const N: usize>(
    acc: &mut Accumulators<N>,
    block: *const u8,
    acts: &[&BlockQ8K; N],
    quants: &[__m256i; 8],
) {
    let (d, dmin) = (read_f16(block), read_f16(block.add(2)));
    let scales_mins = _mm256_cvtepu8_epi16(k4_scales_mins(block.add(4)));
    let scales = _mm256_permute2x128_si256::<0x00>(scales_mins, scales_mins);
    let mins = _mm256_extracti128_si256::<1>(scales_mins);
    let mut sumi = [_mm256_setzero_si256(); N];
    for (group, &q) in quants.iter().enumerate() {
        let lane = (((2 * group + 1) << 8) | (2 * group)) as i16;
        let scale = _mm256_shuffle_epi8(scales, _mm256_set1_epi16(lane));
        accumulate::<E, N>(&mut sumi, acts, 32 * group, q, scale);
    }
    for r in 0..N {
        let sums = bsums(acts[r]);
        let pair_sums = _mm_hadd_epi16(
            _mm256_castsi256_si128(sums),
            _mm256_extracti128_si256::<1>(sums),
        );
        let summs = _mm256_set_m128i(_mm_setzero_si128(), _mm_madd_epi16(mins, pair_sums));
        let d_all = _mm256_set1_ps(d * acts[r].d);
        let d_min = _mm256_set1_ps(dmin * acts[r].d);
        acc.scaled[r] = _mm256_fmadd_ps(d_all, _mm256_cvtepi32_ps(sumi[r]), acc.scaled[r]);
        acc.mins[r] = _mm256_fmadd_ps(d_min, _mm256_cvtepi32_ps(summs), acc.mins[r]);
    }
}

/// The low and high nibbles of 32 packed bytes at `p`.
///
/// # Safety
/// `p..p + 32` must be readable; AVX2 must be enabled in the caller.
#[inline(always)]
unsafe fn split_nibbles(p: *const u8) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0x0F);
    let packed = load_32(p);
    (
        _mm256_and_si256(packed, m4),
        _mm256_and_si256(_mm256_srli_epi16::<4>(packed), m4),
    )
}

/// Q4_K: q in 0..=15, 6-bit scale and min per 32.
#[inline(always)]
unsafe fn q4_k_kernel<E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const BlockQ8K; N],
) -> [f32; N] {
    let mut acc = Accumulators::<N>::new();
    for ib in 0..nb {
        let block = w.add(ib * 144);
        let acts = act_blocks(&xs, ib);
        let mut quants = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            (quants[2 * j], quants[2 * j + 1]) = split_nibbles(block.add(16 + 32 * j));
        }
        scale_min_32::<E, N>(&mut acc, block, &acts, &quants);
    }
    acc.finish()
}

/// Q5_K: as Q4_K with the fifth bit of group `g` in bit `g` of `qh`.
#[inline(always)]
unsafe fn q5_k_kernel<E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const BlockQ8K; N],
) -> [f32; N] {
    let mut acc = Accumulators::<N>::new();
    let sixteen = _mm256_set1_epi8(0x10);
    for ib in 0..nb {
        let block = w.add(ib * 176);
        let acts = act_blocks(&xs, ib);
        let hbits = load_32(block.add(16));
        let mut high_mask = _mm256_set1_epi8(1);
        let mut quants = [_mm256_setzero_si256(); 8];
        for j in 0..4 {
            (quants[2 * j], quants[2 * j + 1]) = split_nibbles(block.add(48 + 32 * j));
        }
        for q in quants.iter_mut() {
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(hbits, high_mask), high_mask);
            high_mask = _mm256_slli_epi16::<1>(high_mask);
            *q = _mm256_or_si256(*q, _mm256_and_si256(set, sixteen));
        }
        scale_min_32::<E, N>(&mut acc, block, &acts, &quants);
    }
    acc.finish()
}

/// Q6_K: q in 0..=63 (offset −32), signed 8-bit scales per 16.
#[inline(always)]
unsafe fn q6_k_kernel<E: IntDot, const N: usize>(
    w: *const u8,
    nb: usize,
    xs: [*const BlockQ8K; N],
) -> [f32; N] {
    let mut acc = Accumulators::<N>::new();
    let m4 = _mm256_set1_epi8(0x0F);
    let m_high = _mm256_set1_epi8(0x30);
    for ib in 0..nb {
        let block = w.add(ib * 210);
        let scales = _mm_loadu_si128(block.add(192).cast());
        let offset_scales = negated_scales::<5>(scales);
        let d = read_f16(block.add(208));
        let acts = act_blocks(&xs, ib);
        let mut sumi = [_mm256_setzero_si256(); N];
        for half in 0..2 {
            let low_a = load_32(block.add(64 * half));
            let low_b = load_32(block.add(64 * half + 32));
            let high = load_32(block.add(128 + 32 * half));
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(low_a, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(high), m_high),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(low_b, m4),
                    _mm256_and_si256(_mm256_slli_epi16::<2>(high), m_high),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(low_a), m4),
                    _mm256_and_si256(high, m_high),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(low_b), m4),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(high), m_high),
                ),
            ];
            for (k, &qk) in q.iter().enumerate() {
                let pair = scale_pair(scales, 8 * half + 2 * k);
                accumulate::<E, N>(&mut sumi, &acts, 128 * half + 32 * k, qk, pair);
            }
        }
        for r in 0..N {
            let total = E::madd_i16(sumi[r], bsums(acts[r]), offset_scales);
            let d_all = _mm256_set1_ps(d * acts[r].d);
            acc.scaled[r] = _mm256_fmadd_ps(d_all, _mm256_cvtepi32_ps(total), acc.scaled[r]);
        }
    }
    acc.finish()
}

super::simd_row_kernels!(
    /// Q2_K weights · Q8_K activations.
    q2_k, BlockQ8K, std::convert::identity, 84, q2_k_kernel
);
super::simd_row_kernels!(
    /// Q3_K weights · Q8_K activations.
    q3_k, BlockQ8K, std::convert::identity, 110, q3_k_kernel
);
super::simd_row_kernels!(
    /// Q4_K weights · Q8_K activations.
    q4_k, BlockQ8K, std::convert::identity, 144, q4_k_kernel
);
super::simd_row_kernels!(
    /// Q5_K weights · Q8_K activations.
    q5_k, BlockQ8K, std::convert::identity, 176, q5_k_kernel
);
super::simd_row_kernels!(
    /// Q6_K weights · Q8_K activations.
    q6_k, BlockQ8K, std::convert::identity, 210, q6_k_kernel
);
