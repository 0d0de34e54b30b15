//! Dequantization of the k-quants Q2_K, Q3_K, Q4_K, Q5_K and Q6_K (256-element super-blocks).
//!
//! Layouts (bytes, `QK_K` = 256):
//! - Q2_K `scales[16] (4-bit scale | 4-bit min << 4), qs[64], d:f16, dmin:f16`
//! - Q3_K `hmask[32], qs[64], scales[12] (16 packed 6-bit), d:f16`
//! - Q4_K `d:f16, dmin:f16, scales[12] (8 packed 6-bit scales and mins), qs[128]`
//! - Q5_K `d:f16, dmin:f16, scales[12], qh[32], qs[128]`
//! - Q6_K `ql[128], qh[64], scales:i8[16], d:f16`

use super::f16_at;

pub(super) fn dequantize_q2_k(block: &[u8], out: &mut [f32]) {
    let scales = &block[0..16];
    let qs = &block[16..80];
    let d = f16_at(block, 80);
    let dmin = f16_at(block, 82);
    for half in 0..2 {
        for shift_index in 0..4 {
            for l in 0..32 {
                let e = half * 128 + shift_index * 32 + l;
                let sc = scales[e / 16];
                let dl = d * f32::from(sc & 0x0F);
                let ml = dmin * f32::from(sc >> 4);
                let q = (qs[half * 32 + l] >> (2 * shift_index)) & 3;
                out[e] = dl * f32::from(q) - ml;
            }
        }
    }
}

/// The 16 signed 6-bit scales of a Q3_K block (already offset by −32).
fn q3_k_scales(packed: &[u8]) -> [i32; 16] {
    let mut scales = [0i32; 16];
    for (i, scale) in scales.iter_mut().enumerate() {
        let low = if i < 8 {
            packed[i] & 0x0F
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *scale = i32::from(low | (high << 4)) - 32;
    }
    scales
}

pub(super) fn dequantize_q3_k(block: &[u8], out: &mut [f32]) {
    let hmask = &block[0..32];
    let qs = &block[32..96];
    let scales = q3_k_scales(&block[96..108]);
    let d = f16_at(block, 108);
    let dl: [f32; 16] = std::array::from_fn(|g| d * scales[g] as f32);
    for half in 0..2 {
        for shift_index in 0..4 {
            let high_bit = half * 4 + shift_index;
            for l in 0..32 {
                let e = half * 128 + shift_index * 32 + l;
                let low = i32::from((qs[half * 32 + l] >> (2 * shift_index)) & 3);
                let offset = if (hmask[l] >> high_bit) & 1 == 1 {
                    0
                } else {
                    4
                };
                out[e] = dl[e / 16] * (low - offset) as f32;
            }
        }
    }
}

/// Scale and min number `j` (0..8) of the 12 packed bytes of a Q4_K/Q5_K block
/// (`get_scale_min_k4` in ggml).
pub(crate) fn scale_min_k4(j: usize, packed: &[u8]) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        (
            (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4),
            (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
        )
    }
}

pub(super) fn dequantize_q4_k(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let packed = &block[4..16];
    let qs = &block[16..144];
    for chunk in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * chunk, packed);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, packed);
        let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let q = &qs[32 * chunk..32 * chunk + 32];
        let y = &mut out[64 * chunk..64 * chunk + 64];
        for l in 0..32 {
            y[l] = d1 * f32::from(q[l] & 0x0F) - min1;
            y[l + 32] = d2 * f32::from(q[l] >> 4) - min2;
        }
    }
}

pub(super) fn dequantize_q5_k(block: &[u8], out: &mut [f32]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let packed = &block[4..16];
    let qh = &block[16..48];
    let qs = &block[48..176];
    for group in 0..8 {
        let (sc, m) = scale_min_k4(group, packed);
        let (dg, mg) = (d * f32::from(sc), dmin * f32::from(m));
        let low_bytes = &qs[(group / 2) * 32..(group / 2) * 32 + 32];
        let shift = 4 * (group % 2);
        for l in 0..32 {
            let q = ((low_bytes[l] >> shift) & 0x0F) | (((qh[l] >> group) & 1) << 4);
            out[group * 32 + l] = dg * f32::from(q) - mg;
        }
    }
}

pub(super) fn dequantize_q6_k(block: &[u8], out: &mut [f32]) {
    let ql = &block[0..128];
    let qh = &block[128..192];
    let scales = &block[192..208];
    let d = f16_at(block, 208);
    let ds: [f32; 16] = std::array::from_fn(|g| d * f32::from(scales[g] as i8));
    for half in 0..2 {
        for quarter in 0..4 {
            let low_start = half * 64 + (quarter % 2) * 32;
            let low_shift = 4 * (quarter / 2);
            for l in 0..32 {
                let e = half * 128 + quarter * 32 + l;
                let low = (ql[low_start + l] >> low_shift) & 0x0F;
                let high = (qh[half * 32 + l] >> (2 * quarter)) & 3;
                let q = i32::from(low | (high << 4)) - 32;
                out[e] = ds[e / 16] * q as f32;
            }
        }
    }
}
