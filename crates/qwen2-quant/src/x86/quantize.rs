//! AVX2 quantization of f32 activations to Q8_0 blocks, bit-exact with the scalar
//! `quantize_row_q8_0_ref` semantics of [`crate::activation`]: the same f32 operations
//! (`amax / 127`, `1 / d`, `x · id`) and `roundf` (half away from zero) done exactly as
//! `trunc(v) + (|v − trunc(v)| ≥ 0.5 ? ±1 : 0)`. Blocks holding a NaN or an infinity, or
//! with a subnormal scale, take the scalar path, so those agree too.

use std::arch::x86_64::*;

use half::f16;

use crate::activation::{BlockQ8_0, QK8};
use crate::dispatch::KernelPath;

/// Quantizes the whole blocks of `x` into `out` (one block per 32 values; `scalar` quantizes
/// the blocks that are not all finite), or returns `false` (writing nothing) when this CPU
/// lacks AVX2.
pub(crate) fn quantize_q8_0(
    x: &[f32],
    out: &mut [BlockQ8_0],
    scalar: fn(&[f32]) -> BlockQ8_0,
) -> bool {
    if !KernelPath::Avx2.is_available() {
        return false;
    }
    assert_eq!(x.len(), out.len() * QK8, "whole blocks");
    for (values, block) in x.chunks_exact(QK8).zip(out.iter_mut()) {
        // SAFETY: AVX2 checked above; `values` holds 32 floats.
        *block = match unsafe { quantize_block(values.as_ptr()) } {
            Some(quantized) => quantized,
            None => scalar(values),
        };
    }
    true
}

/// One block of 32 values at `x`, or `None` when one of them is not finite or the scale is
/// subnormal.
///
/// # Safety
/// `x..x + 32` must be readable; the CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn quantize_block(x: *const f32) -> Option<BlockQ8_0> {
    let sign_bit = _mm256_set1_ps(-0.0);
    let infinity = _mm256_set1_ps(f32::INFINITY);
    let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(x.add(8 * k)));
    let abs = v.map(|v| _mm256_andnot_ps(sign_bit, v));
    let not_finite = abs.map(|a| _mm256_cmp_ps::<_CMP_NLT_UQ>(a, infinity));
    let not_finite = _mm256_or_ps(
        _mm256_or_ps(not_finite[0], not_finite[1]),
        _mm256_or_ps(not_finite[2], not_finite[3]),
    );
    if _mm256_movemask_ps(not_finite) != 0 {
        return None;
    }
    let max8 = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
    let max4 = _mm_max_ps(
        _mm256_castps256_ps128(max8),
        _mm256_extractf128_ps::<1>(max8),
    );
    let max2 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
    let amax = _mm_cvtss_f32(_mm_max_ss(max2, _mm_movehdup_ps(max2)));
    let d = amax / 127.0;
    if d != 0.0 && d < f32::MIN_POSITIVE {
        // A subnormal scale: `x · id` may leave −127..=127 (or overflow to ±inf / NaN), where
        // the scalar `as i8` saturates differently from the packs below.
        return None;
    }
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let id = _mm256_set1_ps(id);
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let ints = v.map(|v| {
        let scaled = _mm256_mul_ps(v, id);
        let truncated = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(scaled);
        let fraction = _mm256_andnot_ps(sign_bit, _mm256_sub_ps(scaled, truncated));
        let away = _mm256_cmp_ps::<_CMP_GE_OQ>(fraction, half);
        let step = _mm256_and_ps(away, _mm256_or_ps(one, _mm256_and_ps(scaled, sign_bit)));
        _mm256_cvtps_epi32(_mm256_add_ps(truncated, step))
    });
    // i32 → i16 → i8 (saturating, exact for −127..=127); the packs interleave 128-bit lanes.
    let low = _mm256_packs_epi32(ints[0], ints[1]);
    let high = _mm256_packs_epi32(ints[2], ints[3]);
    let bytes = _mm256_packs_epi16(low, high);
    let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut block = BlockQ8_0 {
        d: f16::from_f32(d),
        qs: [0; QK8],
    };
    _mm256_storeu_si256(block.qs.as_mut_ptr().cast(), bytes);
    Some(block)
}

#[cfg(test)]
mod tests {
    use crate::activation::{quantize_q8_0, quantize_q8_0_scalar};

    /// Values whose scaled quants land on and next to .5 ties, zeros, tiny and huge values,
    /// and non-finite ones.
    fn rows() -> Vec<Vec<f32>> {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        };
        let mut rows: Vec<Vec<f32>> = (0..200)
            .map(|k| (0..64).map(|_| random() * (k as f32 + 1.0)).collect())
            .collect();
        rows.push((0..64).map(|i| (i as f32 - 31.5) / 127.0).collect());
        rows.push((0..64).map(|i| (i % 32) as f32 + 0.5).collect());
        // amax 127: d = 1, id = 1, so the quants are the values: exact ties ±(k + 0.5) and
        // their neighbours.
        rows.push(
            (0..64)
                .map(|i| match i % 32 {
                    0 => 127.0,
                    k if k % 3 == 0 => -(k as f32 + 0.5),
                    k if k % 3 == 1 => f32::from_bits((k as f32 + 0.5).to_bits() - 1),
                    k => -f32::from_bits((k as f32 + 0.5).to_bits() + 1),
                })
                .collect(),
        );
        rows.push(
            (0..64)
                .map(|i| f32::from_bits(0x3f00_0000 + (i % 3) as u32 - 1))
                .collect(),
        );
        rows.push(vec![0.0; 64]);
        rows.push((0..64).map(|i| -(i as f32) * 1e-38).collect());
        rows.push((0..64).map(|i| (i as f32 - 20.0) * 1e36).collect());
        let mut special = vec![1.0; 64];
        special[3] = f32::NAN;
        special[40] = f32::INFINITY;
        special[41] = -f32::INFINITY;
        rows.push(special);
        rows
    }

    #[test]
    fn simd_quantization_is_bit_exact_with_scalar() {
        for row in rows() {
            let simd = quantize_q8_0(&row).unwrap();
            let scalar = quantize_q8_0_scalar(&row);
            for (a, b) in simd.iter().zip(&scalar) {
                assert_eq!(a.d.to_bits(), b.d.to_bits(), "{row:?}");
                assert_eq!(a.qs, b.qs, "{row:?}");
            }
        }
    }
}
