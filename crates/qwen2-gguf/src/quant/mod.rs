//! Quantization of f32 values to ggml types.
//!
//! - F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0: bit-exact with gguf-py's
//!   `gguf.quants.quantize` (which matches llama.cpp's `quantize_row_*_ref`).
//! - Q4_K, Q6_K: llama.cpp's reference algorithms (`quantize_row_q4_K_ref`,
//!   `quantize_row_q6_K_ref`, i.e. without an importance matrix), with the same f32 operations
//!   in the same order as the C code compiled without FMA contraction.

mod k_lanes;
mod k_quants;
mod legacy;

use half::f16;

use crate::error::{GgufError, Result};
use crate::ggml_type::GgmlType;

/// Quantizes `input` (a whole number of blocks) to `ggml_type` into `out`, which must have
/// exactly the encoded size.
pub fn quantize_into(ggml_type: GgmlType, input: &[f32], out: &mut [u8]) -> Result<()> {
    let block_fn = block_quantizer(ggml_type).ok_or_else(|| GgufError::UnsupportedTensorType {
        tensor: "(buffer)".to_string(),
        type_name: ggml_type.name().to_string(),
        operation: "quantization",
    })?;
    let (block_size, type_size) = (ggml_type.block_size(), ggml_type.type_size());
    if !input.len().is_multiple_of(block_size) {
        return Err(GgufError::InvalidArgument(format!(
            "{} values cannot be quantized to {ggml_type}: not a multiple of its block size \
             {block_size}",
            input.len()
        )));
    }
    let n_bytes = input.len() / block_size * type_size;
    if out.len() != n_bytes {
        return Err(GgufError::InvalidArgument(format!(
            "{} values quantize to {n_bytes} bytes of {ggml_type}, but the output has {} bytes",
            input.len(),
            out.len()
        )));
    }
    for (values, block) in input
        .chunks_exact(block_size)
        .zip(out.chunks_exact_mut(type_size))
    {
        block_fn(values, block);
    }
    Ok(())
}

/// Quantizes `input` (a whole number of blocks) to `ggml_type` into a new buffer.
pub fn quantize(ggml_type: GgmlType, input: &[f32]) -> Result<Vec<u8>> {
    let n_blocks = input.len() / ggml_type.block_size();
    let mut out = vec![0u8; n_blocks * ggml_type.type_size()];
    quantize_into(ggml_type, input, &mut out)?;
    Ok(out)
}

/// Encodes one block (`block_size` values) into `type_size` bytes.
type BlockQuantizer = fn(&[f32], &mut [u8]);

fn block_quantizer(ggml_type: GgmlType) -> Option<BlockQuantizer> {
    use GgmlType::*;
    Some(match ggml_type {
        F32 => |x, out| out.copy_from_slice(&x[0].to_le_bytes()),
        F16 => |x, out| out.copy_from_slice(&f16::from_f32(x[0]).to_le_bytes()),
        BF16 => |x, out| out.copy_from_slice(&f32_to_bf16_bits(x[0]).to_le_bytes()),
        Q4_0 => legacy::quantize_q4_0,
        Q4_1 => legacy::quantize_q4_1,
        Q5_0 => legacy::quantize_q5_0,
        Q5_1 => legacy::quantize_q5_1,
        Q8_0 => legacy::quantize_q8_0,
        Q4_K => k_quants::quantize_q4_k,
        Q6_K => k_quants::quantize_q6_k,
        _ => return None,
    })
}

/// f32 → bf16 bits as ggml's `ggml_compute_fp32_to_bf16`: NaN made quiet, otherwise round to
/// nearest even.
pub fn f32_to_bf16_bits(value: f32) -> u16 {
    let bits = value.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return ((bits >> 16) | 64) as u16;
    }
    ((u64::from(bits) + 0x7fff + u64::from((bits >> 16) & 1)) >> 16) as u16
}

/// The f16 bits of `value` (round to nearest even), little-endian, written at `out[..2]`.
#[inline]
pub(crate) fn put_f16(out: &mut [u8], value: f32) {
    out[..2].copy_from_slice(&f16::from_f32(value).to_le_bytes());
}
