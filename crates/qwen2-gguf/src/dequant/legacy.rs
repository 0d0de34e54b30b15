//! Dequantization of the 32-element block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//!
//! Layouts (bytes): Q4_0 `d:f16, qs[16]`; Q4_1 `d:f16, m:f16, qs[16]`; Q5_0
//! `d:f16, qh:u32, qs[16]`; Q5_1 `d:f16, m:f16, qh:u32, qs[16]`; Q8_0 `d:f16, qs:i8[32]`.
//! Nibble `j` low holds element `j`, high holds element `j + 16`; bit `i` of `qh` is the fifth
//! bit of element `i`.

use super::f16_at;

pub(super) fn dequantize_q4_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let qs = &block[2..18];
    for j in 0..16 {
        out[j] = d * ((qs[j] & 0x0F) as i32 - 8) as f32;
        out[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}

pub(super) fn dequantize_q4_1(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let qs = &block[4..20];
    for j in 0..16 {
        out[j] = d * f32::from(qs[j] & 0x0F) + m;
        out[j + 16] = d * f32::from(qs[j] >> 4) + m;
    }
}

fn fifth_bits(block: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([
        block[offset],
        block[offset + 1],
        block[offset + 2],
        block[offset + 3],
    ])
}

pub(super) fn dequantize_q5_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let qh = fifth_bits(block, 2);
    let qs = &block[6..22];
    for j in 0..16 {
        let lo = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        out[j] = d * (lo as i32 - 16) as f32;
        out[j + 16] = d * (hi as i32 - 16) as f32;
    }
}

pub(super) fn dequantize_q5_1(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let qh = fifth_bits(block, 4);
    let qs = &block[8..24];
    for j in 0..16 {
        let lo = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        out[j] = d * f32::from(lo) + m;
        out[j + 16] = d * f32::from(hi) + m;
    }
}

pub(super) fn dequantize_q8_0(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    for (value, &q) in out.iter_mut().zip(&block[2..34]) {
        *value = f32::from(q as i8) * d;
    }
}
