//! Scalar dot products of the 32-element block types with Q8_0 / Q8_1 activations
//! (`ggml_vec_dot_q{4_0,4_1,5_0,5_1,8_0}_q8_{0,1}_generic`).
//!
//! Weight layouts (bytes): Q4_0 `d, qs[16]`; Q4_1 `d, m, qs[16]`; Q5_0 `d, qh:u32, qs[16]`;
//! Q5_1 `d, m, qh:u32, qs[16]`; Q8_0 `d, qs:i8[32]`. Low nibble of `qs[j]` is element `j`, the
//! high nibble element `j + 16`; bit `i` of `qh` is element `i`'s fifth bit.

// Kernels index several parallel per-row (or per-element) arrays with one loop variable.
#![allow(clippy::needless_range_loop)]

use super::f16_at;
use crate::activation::{BlockQ8_0, BlockQ8_1};

/// Q8_0 weights (34-byte blocks) · Q8_0 activations.
pub(crate) fn dot_q8_0(w: &[u8], x: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (block, act) in w.chunks_exact(34).zip(x) {
        let sumi: i32 = block[2..34]
            .iter()
            .zip(&act.qs)
            .map(|(&q, &y)| i32::from(q as i8) * i32::from(y))
            .sum();
        sumf += sumi as f32 * (f16_at(block, 0) * act.d.to_f32());
    }
    sumf
}

/// Q4_0 weights (18-byte blocks, values `nibble - 8`) · Q8_0 activations.
pub(crate) fn dot_q4_0(w: &[u8], x: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (block, act) in w.chunks_exact(18).zip(x) {
        let qs = &block[2..18];
        let mut sumi = 0i32;
        for j in 0..16 {
            let low = i32::from(qs[j] & 0x0F) - 8;
            let high = i32::from(qs[j] >> 4) - 8;
            sumi += low * i32::from(act.qs[j]) + high * i32::from(act.qs[j + 16]);
        }
        sumf += sumi as f32 * (f16_at(block, 0) * act.d.to_f32());
    }
    sumf
}

/// Q4_1 weights (20-byte blocks, values `d · nibble + m`) · Q8_1 activations.
pub(crate) fn dot_q4_1(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0f32;
    for (block, act) in w.chunks_exact(20).zip(x) {
        let qs = &block[4..20];
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += i32::from(qs[j] & 0x0F) * i32::from(act.qs[j])
                + i32::from(qs[j] >> 4) * i32::from(act.qs[j + 16]);
        }
        sumf +=
            (f16_at(block, 0) * act.d.to_f32()) * sumi as f32 + f16_at(block, 2) * act.s.to_f32();
    }
    sumf
}

fn fifth_bits(block: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([
        block[offset],
        block[offset + 1],
        block[offset + 2],
        block[offset + 3],
    ])
}

/// The 5-bit values (0..=31) of a Q5 block's 16 packed bytes and 32 fifth bits.
fn five_bit_values(qs: &[u8], qh: u32) -> [i32; 32] {
    std::array::from_fn(|i| {
        let nibble = if i < 16 {
            qs[i] & 0x0F
        } else {
            qs[i - 16] >> 4
        };
        i32::from(nibble) | (((qh >> i) & 1) as i32) << 4
    })
}

/// Q5_0 weights (22-byte blocks, values `q - 16`) · Q8_0 activations.
pub(crate) fn dot_q5_0(w: &[u8], x: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (block, act) in w.chunks_exact(22).zip(x) {
        let values = five_bit_values(&block[6..22], fifth_bits(block, 2));
        let sumi: i32 = values
            .iter()
            .zip(&act.qs)
            .map(|(&q, &y)| (q - 16) * i32::from(y))
            .sum();
        sumf += sumi as f32 * (f16_at(block, 0) * act.d.to_f32());
    }
    sumf
}

/// Q5_1 weights (24-byte blocks, values `d · q + m`) · Q8_1 activations.
pub(crate) fn dot_q5_1(w: &[u8], x: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0f32;
    for (block, act) in w.chunks_exact(24).zip(x) {
        let values = five_bit_values(&block[8..24], fifth_bits(block, 4));
        let sumi: i32 = values
            .iter()
            .zip(&act.qs)
            .map(|(&q, &y)| q * i32::from(y))
            .sum();
        sumf +=
            (f16_at(block, 0) * act.d.to_f32()) * sumi as f32 + f16_at(block, 2) * act.s.to_f32();
    }
    sumf
}
