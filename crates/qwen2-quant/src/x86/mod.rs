//! x86-64 SIMD kernels: AVX2 (`vpmaddubsw` + `vpmaddwd`) and AVX-512 VNNI (`vpdpbusd` /
//! `vpdpwssd` on 256-bit registers).
//!
//! Every kernel is written once, generic over [`IntDot`] (the integer multiply-accumulate
//! primitives) and over `N`, the number of activation rows multiplied by one weight row at
//! once: each weight block is loaded and unpacked once per `N` activation rows. The
//! `#[inline(always)]` generic bodies are instantiated inside `#[target_feature]` entry points
//! (see [`simd_row_kernels!`]), so the intrinsics compile with the entry point's features.
//! Per activation row the f32 operations are the same for every `N`, so the results do not
//! depend on how rows are grouped.

// Kernels index several parallel per-row (or per-element) arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

mod k_quants;
mod legacy;

use std::arch::x86_64::*;

pub(crate) use k_quants::{q2_k, q3_k, q4_k, q5_k, q6_k};
pub(crate) use legacy::{q4_0, q4_1, q5_0, q5_1, q8_0};

/// Integer multiply-accumulate primitives; all results are exact (no saturation for the
/// operand ranges the kernels use: unsigned bytes ≤ 128 times signed bytes in −127..=127).
pub(crate) trait IntDot {
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
}

/// [`IntDot`] with AVX2 `maddubs` + `madd` + `add`.
pub(crate) struct Avx2Dot;

impl IntDot for Avx2Dot {
    #[inline(always)]
    unsafe fn dot_u8_i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(u, s);
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    #[inline(always)]
    unsafe fn madd_i16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }
}

/// [`IntDot`] with AVX-512 VNNI (256-bit forms, avx512vl).
pub(crate) struct VnniDot;

impl IntDot for VnniDot {
    #[inline(always)]
    unsafe fn dot_u8_i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }

    #[inline(always)]
    unsafe fn madd_i16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, a, b)
    }
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
    let bits = u32::from_le(p.cast::<u32>().read_unaligned());
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

/// Defines module `$module` with the AVX2 and AVX-512 VNNI entry points of the generic kernel
/// `$kernel::<E, N>(w, nb, xs)` and `kernel(path)`, which hands out a safe
/// [`RowsFn`](crate::kernels::RowsFn) only for an available path.
macro_rules! simd_row_kernels {
    ($(#[$doc:meta])* $module:ident, $act:ty, $block_bytes:expr, $kernel:ident) => {
        $(#[$doc])*
        pub(crate) mod $module {
            use super::*;
            use crate::dispatch::KernelPath;
            use crate::kernels::RowsFn;

            /// # Safety
            /// The CPU must support avx2, fma and f16c; `w` must hold `nb` weight blocks and
            /// every `xs[r]` `nb` activation blocks.
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2<const N: usize>(w: *const u8, nb: usize, xs: [*const $act; N]) -> [f32; N] {
                $kernel::<Avx2Dot, N>(w, nb, xs)
            }

            /// # Safety
            /// The CPU must support avx2, fma, f16c, avx512vnni and avx512vl; `w` must hold
            /// `nb` weight blocks and every `xs[r]` `nb` activation blocks.
            #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
            unsafe fn vnni<const N: usize>(w: *const u8, nb: usize, xs: [*const $act; N]) -> [f32; N] {
                $kernel::<VnniDot, N>(w, nb, xs)
            }

            /// Rows in groups of 4, then one at a time. Only reachable through the fns that
            /// `kernel` hands out after checking the path's CPU features.
            fn rows(use_vnni: bool, w: &[u8], xs: &[&[$act]], out: &mut [f32]) {
                let nb = w.len() / $block_bytes;
                assert!(
                    w.len() == nb * $block_bytes
                        && xs.len() == out.len()
                        && xs.iter().all(|x| x.len() == nb),
                    "qwen2-quant internal error: kernel called with mismatched lengths"
                );
                let mut outs = out.chunks_exact_mut(4);
                let mut groups = xs.chunks_exact(4);
                for (group, out4) in (&mut groups).zip(&mut outs) {
                    let ptrs: [*const $act; 4] = std::array::from_fn(|i| group[i].as_ptr());
                    // SAFETY: lengths checked above; the CPU features were checked by
                    // `kernel` before handing out the fn that called us.
                    let sums = unsafe {
                        if use_vnni { vnni::<4>(w.as_ptr(), nb, ptrs) } else { avx2::<4>(w.as_ptr(), nb, ptrs) }
                    };
                    out4.copy_from_slice(&sums);
                }
                for (x, o) in groups.remainder().iter().zip(outs.into_remainder()) {
                    // SAFETY: as above.
                    let [sum] = unsafe {
                        if use_vnni { vnni::<1>(w.as_ptr(), nb, [x.as_ptr()]) } else { avx2::<1>(w.as_ptr(), nb, [x.as_ptr()]) }
                    };
                    *o = sum;
                }
            }

            fn rows_avx2(w: &[u8], xs: &[&[$act]], out: &mut [f32]) {
                rows(false, w, xs, out)
            }

            fn rows_vnni(w: &[u8], xs: &[&[$act]], out: &mut [f32]) {
                rows(true, w, xs, out)
            }

            /// The kernel for `path`, or `None` when it is not a SIMD path or this CPU lacks
            /// its features.
            pub(crate) fn kernel(path: KernelPath) -> Option<RowsFn<$act>> {
                match path {
                    KernelPath::Avx2 if path.is_available() => Some(rows_avx2),
                    KernelPath::Avx512Vnni if path.is_available() => Some(rows_vnni),
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use simd_row_kernels;
