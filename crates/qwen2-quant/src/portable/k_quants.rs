//! Scalar dot products of the k-quants with Q8_K activations
//! (`ggml_vec_dot_q{2,3,4,5,6}_K_q8_K_generic`): per 256-element super-block an exact integer
//! sum `isum = Σ_group scale · Σ q·y` (and `Σ min · bsum` for the types with minimums), then
//! `sumf += (d_w · d_x) · isum − (dmin_w · d_x) · summs` in f32.
//!
//! Layouts (bytes): Q2_K `scales[16], qs[64], d, dmin`; Q3_K `hmask[32], qs[64], scales[12],
//! d`; Q4_K `d, dmin, scales[12], qs[128]`; Q5_K `d, dmin, scales[12], qh[32], qs[128]`;
//! Q6_K `ql[128], qh[64], scales:i8[16], d`.

use super::f16_at;
use crate::activation::BlockQ8K;

/// The 8 six-bit scales and 8 six-bit mins packed in 12 bytes (`get_scale_min_k4`).
fn q4_k_scales_mins(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for j in 0..8 {
        (scales[j], mins[j]) = if j < 4 {
            (packed[j] & 63, packed[j + 4] & 63)
        } else {
            (
                (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4),
                (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
            )
        };
    }
    (scales, mins)
}

/// The 16 signed scales (`-32..=31`) of a Q3_K block, packed as 6 bits in 12 bytes.
fn q3_k_scales(packed: &[u8]) -> [i8; 16] {
    std::array::from_fn(|i| {
        let low = if i < 8 {
            packed[i] & 0x0F
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    })
}

/// `Σ_l q[l] · y[l]` over equal-length slices.
#[inline]
fn int_dot(q: &[i32], y: &[i8]) -> i32 {
    q.iter().zip(y).map(|(&a, &b)| a * i32::from(b)).sum()
}

/// `Σ_j weights[j] · Σ_{l in group j of size n} q[l]·y[l]` for the 256 values.
fn grouped_dot(q: &[i32; 256], y: &[i8; 256], group: usize, weights: impl Fn(usize) -> i32) -> i32 {
    q.chunks_exact(group)
        .zip(y.chunks_exact(group))
        .enumerate()
        .map(|(j, (qg, yg))| weights(j) * int_dot(qg, yg))
        .sum()
}

/// `Σ_j mins(j) · (bsums of the 256/n16 groups of 16 in group j)`, groups of `group` values.
fn min_sum(act: &BlockQ8K, group: usize, mins: impl Fn(usize) -> i32) -> i32 {
    let per = group / 16;
    act.bsums
        .chunks_exact(per)
        .enumerate()
        .map(|(j, sums)| mins(j) * sums.iter().map(|&s| i32::from(s)).sum::<i32>())
        .sum()
}

/// Q2_K (84-byte blocks, `d·(sc&15)·q − dmin·(sc>>4)`, q in 0..=3) · Q8_K.
pub(crate) fn dot_q2_k(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (block, act) in w.chunks_exact(84).zip(x) {
        let (scales, qs) = (&block[0..16], &block[16..80]);
        let q: [i32; 256] = std::array::from_fn(|e| {
            let (half, shift, l) = (e / 128, (e % 128) / 32, e % 32);
            i32::from((qs[half * 32 + l] >> (2 * shift)) & 3)
        });
        let isum = grouped_dot(&q, &act.qs, 16, |j| i32::from(scales[j] & 0x0F));
        let summs = min_sum(act, 16, |j| i32::from(scales[j] >> 4));
        let dall = act.d * f16_at(block, 80);
        let dmin = act.d * f16_at(block, 82);
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// Q3_K (110-byte blocks, `d·scale·(q − 4·!hbit)`) · Q8_K.
pub(crate) fn dot_q3_k(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (block, act) in w.chunks_exact(110).zip(x) {
        let (hmask, qs) = (&block[0..32], &block[32..96]);
        let scales = q3_k_scales(&block[96..108]);
        let q: [i32; 256] = std::array::from_fn(|e| {
            let (half, shift, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = i32::from((qs[half * 32 + l] >> (2 * shift)) & 3);
            let high_set = (hmask[l] >> (half * 4 + shift)) & 1 == 1;
            low - if high_set { 0 } else { 4 }
        });
        let isum = grouped_dot(&q, &act.qs, 16, |j| i32::from(scales[j]));
        sumf += (f16_at(block, 108) * act.d) * isum as f32;
    }
    sumf
}

/// Q4_K (144-byte blocks, `d·sc·q − dmin·m` per 32, q in 0..=15) · Q8_K.
pub(crate) fn dot_q4_k(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (block, act) in w.chunks_exact(144).zip(x) {
        let (scales, mins) = q4_k_scales_mins(&block[4..16]);
        let qs = &block[16..144];
        let q: [i32; 256] = std::array::from_fn(|e| {
            let (chunk, high, l) = (e / 64, (e % 64) / 32, e % 32);
            i32::from((qs[chunk * 32 + l] >> (4 * high)) & 0x0F)
        });
        let isum = grouped_dot(&q, &act.qs, 32, |j| i32::from(scales[j]));
        let summs = min_sum(act, 32, |j| i32::from(mins[j]));
        let d = f16_at(block, 0) * act.d;
        let dmin = f16_at(block, 2) * act.d;
        sumf += d * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// Q5_K (176-byte blocks, as Q4_K with a fifth bit from `qh`) · Q8_K.
pub(crate) fn dot_q5_k(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (block, act) in w.chunks_exact(176).zip(x) {
        let (scales, mins) = q4_k_scales_mins(&block[4..16]);
        let (qh, qs) = (&block[16..48], &block[48..176]);
        let q: [i32; 256] = std::array::from_fn(|e| {
            let (group, l) = (e / 32, e % 32);
            let low = (qs[(group / 2) * 32 + l] >> (4 * (group % 2))) & 0x0F;
            i32::from(low | (((qh[l] >> group) & 1) << 4))
        });
        let isum = grouped_dot(&q, &act.qs, 32, |j| i32::from(scales[j]));
        let summs = min_sum(act, 32, |j| i32::from(mins[j]));
        let d = f16_at(block, 0) * act.d;
        let dmin = f16_at(block, 2) * act.d;
        sumf += d * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// Q6_K (210-byte blocks, `d·scale·(q − 32)`, q in 0..=63) · Q8_K.
pub(crate) fn dot_q6_k(w: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (block, act) in w.chunks_exact(210).zip(x) {
        let (ql, qh, scales) = (&block[0..128], &block[128..192], &block[192..208]);
        let q: [i32; 256] = std::array::from_fn(|e| {
            let (half, quarter, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = (ql[half * 64 + (quarter % 2) * 32 + l] >> (4 * (quarter / 2))) & 0x0F;
            let high = (qh[half * 32 + l] >> (2 * quarter)) & 3;
            i32::from(low | (high << 4)) - 32
        });
        let isum = grouped_dot(&q, &act.qs, 16, |j| i32::from(scales[j] as i8));
        sumf += (f16_at(block, 208) * act.d) * isum as f32;
    }
    sumf
}
