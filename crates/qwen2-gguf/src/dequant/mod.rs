//! Dequantization of ggml tensor data to f32, bit-exact with gguf-py's
//! `gguf.quants.dequantize` (and llama.cpp's scalar `dequantize_row_*`): each element is
//! computed with the same f32 operations in the same order.

mod k_quants;
pub(crate) use k_quants::scale_min_k4;
mod legacy;

use half::{bf16, f16};

use crate::error::{GgufError, Result};
use crate::ggml_type::GgmlType;

/// Dequantizes `data` (whole blocks of `ggml_type`) into `out`, which must hold exactly the
/// number of elements the blocks encode.
pub fn dequantize_into(ggml_type: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    let block_fn = block_dequantizer(ggml_type).ok_or_else(|| unsupported(ggml_type))?;
    let (block_size, type_size) = (ggml_type.block_size(), ggml_type.type_size());
    if !data.len().is_multiple_of(type_size) {
        return Err(GgufError::InvalidArgument(format!(
            "{} bytes of {ggml_type} data are not a whole number of {type_size}-byte blocks",
            data.len()
        )));
    }
    let n_elements = data.len() / type_size * block_size;
    if out.len() != n_elements {
        return Err(GgufError::InvalidArgument(format!(
            "{} bytes of {ggml_type} data hold {n_elements} values, but the output has room \
             for {}",
            data.len(),
            out.len()
        )));
    }
    for (block, values) in data
        .chunks_exact(type_size)
        .zip(out.chunks_exact_mut(block_size))
    {
        block_fn(block, values);
    }
    Ok(())
}

/// Dequantizes `data` (whole blocks of `ggml_type`) into a new vector.
pub fn dequantize(ggml_type: GgmlType, data: &[u8]) -> Result<Vec<f32>> {
    let type_size = ggml_type.type_size();
    let n_elements = data.len() / type_size * ggml_type.block_size();
    let mut out = vec![0f32; n_elements];
    dequantize_into(ggml_type, data, &mut out)?;
    Ok(out)
}

/// Dequantizes `data` and rounds each value to bf16 (round to nearest even), for loading
/// quantized weights into bf16 tensors.
pub fn dequantize_to_bf16(ggml_type: GgmlType, data: &[u8]) -> Result<Vec<bf16>> {
    Ok(dequantize(ggml_type, data)?
        .into_iter()
        .map(bf16::from_f32)
        .collect())
}

/// Dequantizes `data` and rounds each value to f16 (round to nearest even).
pub fn dequantize_to_f16(ggml_type: GgmlType, data: &[u8]) -> Result<Vec<f16>> {
    Ok(dequantize(ggml_type, data)?
        .into_iter()
        .map(f16::from_f32)
        .collect())
}

fn unsupported(ggml_type: GgmlType) -> GgufError {
    GgufError::UnsupportedTensorType {
        tensor: "(buffer)".to_string(),
        type_name: ggml_type.name().to_string(),
        operation: "dequantization",
    }
}

/// Decodes one block (`type_size` bytes) into `block_size` values.
type BlockDequantizer = fn(&[u8], &mut [f32]);

fn block_dequantizer(ggml_type: GgmlType) -> Option<BlockDequantizer> {
    use GgmlType::*;
    Some(match ggml_type {
        F32 => |b, out| out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        F16 => |b, out| out[0] = f16_at(b, 0),
        BF16 => |b, out| out[0] = f32::from_bits(u32::from(u16_at(b, 0)) << 16),
        Q4_0 => legacy::dequantize_q4_0,
        Q4_1 => legacy::dequantize_q4_1,
        Q5_0 => legacy::dequantize_q5_0,
        Q5_1 => legacy::dequantize_q5_1,
        Q8_0 => legacy::dequantize_q8_0,
        Q2_K => k_quants::dequantize_q2_k,
        Q3_K => k_quants::dequantize_q3_k,
        Q4_K => k_quants::dequantize_q4_k,
        Q5_K => k_quants::dequantize_q5_k,
        Q6_K => k_quants::dequantize_q6_k,
        _ => return None,
    })
}

/// The little-endian `u16` at `offset`.
#[inline]
pub(crate) fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

/// The little-endian f16 at `offset`, widened (exactly) to f32.
#[inline]
pub(crate) fn f16_at(bytes: &[u8], offset: usize) -> f32 {
    f16::from_bits(u16_at(bytes, offset)).to_f32()
}
