//! Weight rows of the 32-value block types (Q8_0, Q5_0, Q4_0) dequantized straight to bf16
//! with AVX-512, for the quantized tiles. Each value is `d · q` in f32 (the f16 scale widened,
//! one rounding, as qwen2-gguf's reference dequantizer computes it) rounded to bf16 to nearest
//! even: bit for bit what `qwen2_gguf::dequantize_to_bf16` returns.

use std::arch::x86_64::*;
use std::mem::transmute;

use qwen2_gguf::GgmlType;

/// Writes `rows` rows of `k` values of `data` (blocks of `ty`) as bf16 bits into `bits`, row
/// `r` at `r * stride`; returns `false` (writing nothing) for types this does not handle.
///
/// # Safety
/// The CPU has AVX512-BF16, AVX512F, AVX512BW and AVX512VL; `data` holds `rows` rows of
/// `k / 32` blocks of `ty`; `bits` holds `rows * stride` elements, `stride ≥ k`.
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn rows_to_bf16(
    ty: GgmlType,
    data: &[u8],
    rows: usize,
    k: usize,
    bits: &mut [u16],
    stride: usize,
) -> bool {
    let block_bytes = match ty {
        GgmlType::Q8_0 => 34,
        GgmlType::Q5_0 => 22,
        GgmlType::Q4_0 => 18,
        _ => return false,
    };
    let blocks = k / 32;
    assert!(
        k.is_multiple_of(32)
            && data.len() >= rows * blocks * block_bytes
            && bits.len() >= rows * stride,
        "rows of whole blocks"
    );
    for r in 0..rows {
        for b in 0..blocks {
            let block = data.as_ptr().add((r * blocks + b) * block_bytes);
            let d = _mm512_set1_ps(read_f16(block));
            let q = match ty {
                GgmlType::Q8_0 => _mm256_loadu_si256(block.add(2).cast()),
                GgmlType::Q5_0 => {
                    let qh = block.add(2).cast::<u32>().read_unaligned();
                    let high = _mm256_maskz_mov_epi8(qh, _mm256_set1_epi8(0x10));
                    _mm256_sub_epi8(
                        _mm256_or_si256(nibbles(block.add(6)), high),
                        _mm256_set1_epi8(16),
                    )
                }
                _ => _mm256_sub_epi8(nibbles(block.add(2)), _mm256_set1_epi8(8)),
            };
            let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
            let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q)));
            let v: __m512i = transmute(_mm512_cvtne2ps_pbh(
                _mm512_mul_ps(hi, d),
                _mm512_mul_ps(lo, d),
            ));
            _mm512_storeu_si512(bits.as_mut_ptr().add(r * stride + b * 32).cast(), v);
        }
    }
    true
}

/// The little-endian f16 at `p`, widened to f32 (exact).
#[inline(always)]
unsafe fn read_f16(p: *const u8) -> f32 {
    half::f16::from_bits(p.cast::<u16>().read_unaligned()).to_f32()
}

/// The 32 nibbles of 16 bytes at `p` as bytes: low nibbles in bytes 0..16, high in 16..32
/// (ggml's order: value `j` and `j + 16` of a block share byte `j`).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let packed = _mm_loadu_si128(p.cast());
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(packed), packed);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}
