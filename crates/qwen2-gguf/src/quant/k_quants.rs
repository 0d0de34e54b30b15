//! llama.cpp's reference k-quant quantizers (`quantize_row_q4_K_ref`, `quantize_row_q6_K_ref`)
//! and their helpers (`nearest_int`, `make_qkx2_quants`, `make_qx_quants`), transcribed with
//! the same f32 operations in the same order (no fused multiply-add).

use super::put_f16;
use crate::dequant::{f16_at, scale_min_k4};

/// Below this, a group's values count as all zero (`GROUP_MAX_EPS` in ggml).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Rounds to the nearest integer, ties to even, by ggml's float trick (valid for
/// `|x| <= 4194303`, as in ggml; larger inputs give wrapped results, never a panic).
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let biased = x + 12_582_912.0;
    (biased.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// `make_qkx2_quants`: scale and minimum for values `x` quantized to `0..=nmax` with a
/// weighted search over scales; writes the levels to `levels`. Returns `(scale, -min)`.
#[allow(clippy::too_many_arguments)]
#[cfg(test)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    levels_aux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels[..n].fill(0);
        return (0.0, -min);
    }
    let error_of = |diff: f32| if use_mad { diff.abs() } else { diff * diff };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * error_of(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            levels_aux[i] = l as u8;
            let (w, lf) = (weights[i], l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * f32::from(levels_aux[i]) + this_min - x[i];
                cur_error += weights[i] * error_of(diff);
            }
            if cur_error < best_error {
                levels[..n].copy_from_slice(&levels_aux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qx_quants` with `rmse_type = 1` and no importance weights (weights `x²`): a signed
/// scale for `x` quantized to `-nmax..nmax`; writes `level + nmax` to `levels`.
#[cfg(test)]
fn make_qx_quants_rmse1(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels[..x.len()].fill(0);
        return 0.0;
    }
    let level_of = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let l = level_of(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(nmax as f32) / max;
    for (level, &v) in levels.iter_mut().zip(x) {
        *level = (level_of(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (level, &v) in levels.iter_mut().zip(x) {
                *level = (level_of(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The weights of a Q4_K sub-block search: `av_x + |x|` with `av_x` the RMS of the 32 values.
fn q4_k_weights(xs: &[f32], weights: &mut [f32]) {
    let mut sum_x2 = 0f32;
    for &v in xs {
        sum_x2 += v * v;
    }
    let av_x = (sum_x2 / 32.0).sqrt();
    for (w, &v) in weights.iter_mut().zip(xs) {
        *w = av_x + v.abs();
    }
}

/// One Q4_K super-block (`quantize_row_q4_K_ref`): `d, dmin, scales[12], qs[128]`.
pub(super) fn quantize_q4_k(x: &[f32], out: &mut [u8]) {
    let mut levels = [0u8; 256];
    let mut weights = [0f32; 256];
    for (xs, ws) in x.chunks_exact(32).zip(weights.chunks_exact_mut(32)) {
        q4_k_weights(xs, ws);
    }
    let found = super::k_lanes::make_qkx2_quants_x8(&x[..256], &weights, &mut levels);
    pack_q4_k(x, found, &mut levels, out);
}

/// [`quantize_q4_k`] with the scalar `make_qkx2_quants`, sub-block by sub-block: the
/// transcription the lane version is checked against.
#[cfg(test)]
pub(super) fn quantize_q4_k_scalar(x: &[f32], out: &mut [u8]) {
    let mut levels = [0u8; 256];
    let mut levels_aux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut found = [(0f32, 0f32); 8];
    for (j, found) in found.iter_mut().enumerate() {
        let xs = &x[32 * j..32 * j + 32];
        q4_k_weights(xs, &mut weights);
        *found = make_qkx2_quants(
            15,
            xs,
            &weights,
            &mut levels[32 * j..32 * j + 32],
            &mut levels_aux,
            -1.0,
            0.1,
            20,
            false,
        );
    }
    pack_q4_k(x, found, &mut levels, out);
}

/// The rest of `quantize_row_q4_K_ref` once each sub-block has its `(scale, -min)` and levels:
/// the 6-bit scales and mins, `d` and `dmin`, the levels again against the rounded scales, and
/// the nibbles.
fn pack_q4_k(x: &[f32], found: [(f32, f32); 8], levels: &mut [u8; 256], out: &mut [u8]) {
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for &(scale, min) in &found {
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let packed = &mut out[4..16];
    for (j, &(scale, min)) in found.iter().enumerate() {
        // `uint8_t ls = nearest_int(...)` wraps like `as u8` before the MIN.
        let ls = (nearest_int(inv_scale * scale) as u8).min(63);
        let lm = (nearest_int(inv_min * min) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    put_f16(out, max_scale / 63.0);
    put_f16(&mut out[2..], max_min / 63.0);
    let (d_all, dmin_all) = (f16_at(out, 0), f16_at(out, 2));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &out[4..16]);
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(m);
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + dm) / d).clamp(0, 15) as u8;
        }
    }
    let qs = &mut out[16..144];
    for chunk in 0..4 {
        for l in 0..32 {
            qs[32 * chunk + l] = levels[64 * chunk + l] | (levels[64 * chunk + l + 32] << 4);
        }
    }
}

/// One Q6_K super-block (`quantize_row_q6_K_ref`): `ql[128], qh[64], scales:i8[16], d`.
pub(super) fn quantize_q6_k(x: &[f32], out: &mut [u8]) {
    let mut levels = [0i8; 256];
    let scales = super::k_lanes::make_qx_quants_x16(&x[..256], &mut levels);
    pack_q6_k(x, scales, &mut levels, out);
}

/// [`quantize_q6_k`] with the scalar `make_qx_quants`, sub-block by sub-block: the
/// transcription the lane version is checked against.
#[cfg(test)]
pub(super) fn quantize_q6_k_scalar(x: &[f32], out: &mut [u8]) {
    let mut levels = [0i8; 256];
    let mut scales = [0f32; 16];
    for (ib, scale) in scales.iter_mut().enumerate() {
        let range = 16 * ib..16 * ib + 16;
        *scale = make_qx_quants_rmse1(32, &x[range.clone()], &mut levels[range]);
    }
    pack_q6_k(x, scales, &mut levels, out);
}

/// The rest of `quantize_row_q6_K_ref` once each sub-block has its scale and levels: the 8-bit
/// scales and `d`, the levels again against the rounded scales, and the low and high bits.
fn pack_q6_k(x: &[f32], scales: [f32; 16], levels: &mut [i8; 256], out: &mut [u8]) {
    let mut max_scale = 0f32;
    let mut max_abs_scale = 0f32;
    for &scale in &scales {
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    out.fill(0);
    if max_abs_scale < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    put_f16(&mut out[208..], 1.0 / iscale);
    for (ib, &scale) in scales.iter().enumerate() {
        out[192 + ib] = nearest_int(iscale * scale).min(127) as i8 as u8;
    }
    let d_all = f16_at(out, 208);
    for j in 0..16 {
        let d = d_all * f32::from(out[192 + j] as i8);
        if d == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            levels[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    let (ql, rest) = out.split_at_mut(128);
    let qh = &mut rest[..64];
    for half in 0..2 {
        let (l0, ql0, qh0) = (128 * half, 64 * half, 32 * half);
        for l in 0..32 {
            let level = |k: usize| levels[l0 + l + 32 * k] as u8;
            ql[ql0 + l] = (level(0) & 0x0F) | ((level(2) & 0x0F) << 4);
            ql[ql0 + l + 32] = (level(1) & 0x0F) | ((level(3) & 0x0F) << 4);
            qh[qh0 + l] = (level(0) >> 4)
                | ((level(1) >> 4) << 2)
                | ((level(2) >> 4) << 4)
                | ((level(3) >> 4) << 6);
        }
    }
}
