//! Quantization to the 32-element block types, following gguf-py's `quantize_blocks` (f32
//! arithmetic, the same operations in the same order) and llama.cpp's `quantize_row_*_ref`.

use super::put_f16;

/// The value with the largest magnitude (the first one on ties).
fn signed_absolute_max(x: &[f32]) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// `1/d`, or 0 when `d` is 0.
fn inverse_or_zero(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// Packs 32 nibbles: element `j` in the low half of byte `j`, element `j + 16` in the high.
fn pack_nibbles(q: &[u8; 32], out: &mut [u8]) {
    for j in 0..16 {
        out[j] = (q[j] & 0x0F) | (q[j + 16] << 4);
    }
}

/// Bit `i` of the result is the fifth bit of `q[i]`.
fn fifth_bits(q: &[u8; 32]) -> [u8; 4] {
    let mut qh = 0u32;
    for (i, &v) in q.iter().enumerate() {
        qh |= u32::from((v >> 4) & 1) << i;
    }
    qh.to_le_bytes()
}

pub(super) fn quantize_q4_0(x: &[f32], out: &mut [u8]) {
    let d = signed_absolute_max(x) / -8.0;
    let id = inverse_or_zero(d);
    let q: [u8; 32] = std::array::from_fn(|j| ((x[j] * id + 8.5).trunc() as u8).min(15));
    put_f16(out, d);
    pack_nibbles(&q, &mut out[2..18]);
}

pub(super) fn quantize_q4_1(x: &[f32], out: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse_or_zero(d);
    let q: [u8; 32] = std::array::from_fn(|j| (((x[j] - min) * id + 0.5).trunc() as u8).min(15));
    put_f16(out, d);
    put_f16(&mut out[2..], min);
    pack_nibbles(&q, &mut out[4..20]);
}

pub(super) fn quantize_q5_0(x: &[f32], out: &mut [u8]) {
    let d = signed_absolute_max(x) / -16.0;
    let id = inverse_or_zero(d);
    let q: [u8; 32] = std::array::from_fn(|j| ((x[j] * id + 16.5).trunc() as u8).min(31));
    put_f16(out, d);
    out[2..6].copy_from_slice(&fifth_bits(&q));
    pack_nibbles(&q, &mut out[6..22]);
}

pub(super) fn quantize_q5_1(x: &[f32], out: &mut [u8]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse_or_zero(d);
    let q: [u8; 32] = std::array::from_fn(|j| (((x[j] - min) * id + 0.5).trunc() as u8).min(31));
    put_f16(out, d);
    put_f16(&mut out[2..], min);
    out[4..8].copy_from_slice(&fifth_bits(&q));
    pack_nibbles(&q, &mut out[8..24]);
}

pub(super) fn quantize_q8_0(x: &[f32], out: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, &v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse_or_zero(d);
    put_f16(out, d);
    for (byte, &v) in out[2..34].iter_mut().zip(x) {
        // `round` is half away from zero, as C's `roundf` and gguf-py's `np_roundf`.
        *byte = ((v * id).round() as i8) as u8;
    }
}
