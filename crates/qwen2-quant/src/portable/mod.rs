//! Scalar dot products with llama.cpp's reference (`ggml_vec_dot_*_generic`) semantics: exact
//! integer sums per block, then `sumf += (d_w · d_x) · sumi` in f32.
//!
//! Each function takes one weight row (`x.len()` whole blocks of its type; the caller checks
//! the lengths) and one activation row.

mod k_quants;
mod legacy;

pub(crate) use k_quants::{dot_q2_k, dot_q3_k, dot_q4_k, dot_q5_k, dot_q6_k};
pub(crate) use legacy::{dot_q4_0, dot_q4_1, dot_q5_0, dot_q5_1, dot_q8_0};

use half::f16;

/// The little-endian f16 at `bytes[offset..offset + 2]`, widened to f32.
#[inline]
pub(crate) fn f16_at(bytes: &[u8], offset: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[offset], bytes[offset + 1]])).to_f32()
}
