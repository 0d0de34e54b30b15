//! [`make_qkx2_quants_x8`]: llama.cpp's `make_qkx2_quants` for the eight 32-value sub-blocks of
//! a Q4_K super-block at once, one sub-block per lane; [`make_qx_quants_x16`]: `make_qx_quants`
//! for the sixteen sub-blocks of a Q6_K super-block.
//!
//! Each lane runs exactly the scalar reference's f32 operations in the reference's order (its
//! sums stay sequential over the 32 values), so the results are bit-identical; the eight
//! independent chains only let the CPU overlap them, and the compiler vectorize across lanes.
//! The scalar version took 60% of a `--quantize q4_k` load.
//!
//! The sub-block loops the compiler turns into vector code are written lane-major (`[value][lane]`
//! arrays); an x86-64 CPU with AVX2 runs a copy compiled for it.

use super::k_quants::nearest_int;

/// Sub-blocks per super-block (the lanes).
const L: usize = 8;
/// Values per sub-block.
const N: usize = 32;

/// `make_qkx2_quants(15, x_j, w_j, levels_j, aux, -1, 0.1, 20, false)` for the eight
/// sub-blocks `j` of `x` (256 values, sub-block `j` at `32 j..32 j + 32`) with weights
/// `weights` (same layout): writes the levels of sub-block `j` to `levels[32 j..32 j + 32]`
/// and returns the eight `(scale, -min)`.
pub(super) fn make_qkx2_quants_x8(
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
) -> [(f32, f32); L] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { x8_avx2(x, weights, levels) };
    }
    x8(x, weights, levels)
}

/// [`x8`] compiled for AVX2 (the same IEEE operations, so the same bits; eight lanes fill one
/// register).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn x8_avx2(x: &[f32], weights: &[f32], levels: &mut [u8]) -> [(f32, f32); L] {
    x8(x, weights, levels)
}

/// The body of [`make_qkx2_quants_x8`].
#[inline(always)]
fn x8(x: &[f32], weights: &[f32], levels: &mut [u8]) -> [(f32, f32); L] {
    const NMAX: i32 = 15;
    const RMIN: f32 = -1.0;
    const RDELTA: f32 = 0.1;
    const NSTEP: i32 = 20;
    // Value `i` of every lane side by side.
    let xt: [[f32; L]; N] = std::array::from_fn(|i| std::array::from_fn(|j| x[N * j + i]));
    let wt: [[f32; L]; N] = std::array::from_fn(|i| std::array::from_fn(|j| weights[N * j + i]));
    let mut min = xt[0];
    let mut max = xt[0];
    let mut sum_w: [f32; L] = wt[0];
    let mut sum_x: [f32; L] = std::array::from_fn(|j| sum_w[j] * xt[0][j]);
    for i in 1..N {
        for j in 0..L {
            if xt[i][j] < min[j] {
                min[j] = xt[i][j];
            }
            if xt[i][j] > max[j] {
                max[j] = xt[i][j];
            }
            let w = wt[i][j];
            sum_w[j] += w;
            sum_x[j] += w * xt[i][j];
        }
    }
    for m in &mut min {
        if *m > 0.0 {
            *m = 0.0;
        }
    }
    // Lanes whose values are all equal stop here with zero levels.
    let flat: [bool; L] = std::array::from_fn(|j| max[j] == min[j]);
    let mut lv = [[0u8; L]; N];
    let mut aux = [[0u8; L]; N];
    let mut iscale: [f32; L] = std::array::from_fn(|j| NMAX as f32 / (max[j] - min[j]));
    let mut scale: [f32; L] = std::array::from_fn(|j| 1.0 / iscale[j]);
    let mut best_error = [0f32; L];
    for i in 0..N {
        for j in 0..L {
            let l = nearest_int(iscale[j] * (xt[i][j] - min[j])).clamp(0, NMAX);
            lv[i][j] = l as u8;
            let diff = scale[j] * l as f32 + min[j] - xt[i][j];
            best_error[j] += wt[i][j] * (diff * diff);
        }
    }
    for is in 0..=NSTEP {
        for j in 0..L {
            iscale[j] = (RMIN + RDELTA * is as f32 + NMAX as f32) / (max[j] - min[j]);
        }
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; L], [0f32; L], [0f32; L]);
        for i in 0..N {
            for j in 0..L {
                let l = nearest_int(iscale[j] * (xt[i][j] - min[j])).clamp(0, NMAX);
                aux[i][j] = l as u8;
                let (w, lf) = (wt[i][j], l as f32);
                sum_l[j] += w * lf;
                sum_l2[j] += w * lf * lf;
                sum_xl[j] += w * lf * xt[i][j];
            }
        }
        let mut this_scale = [0f32; L];
        let mut this_min = [0f32; L];
        let mut take = [false; L];
        for j in 0..L {
            let det = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            take[j] = det > 0.0 && !flat[j];
            this_scale[j] = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / det;
            this_min[j] = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / det;
            if this_min[j] > 0.0 {
                this_min[j] = 0.0;
                this_scale[j] = sum_xl[j] / sum_l2[j];
            }
        }
        if !take.iter().any(|&t| t) {
            continue;
        }
        let mut cur_error = [0f32; L];
        for i in 0..N {
            for j in 0..L {
                let diff = this_scale[j] * f32::from(aux[i][j]) + this_min[j] - xt[i][j];
                cur_error[j] += wt[i][j] * (diff * diff);
            }
        }
        for j in 0..L {
            if take[j] && cur_error[j] < best_error[j] {
                for i in 0..N {
                    lv[i][j] = aux[i][j];
                }
                best_error[j] = cur_error[j];
                scale[j] = this_scale[j];
                min[j] = this_min[j];
            }
        }
    }
    for j in 0..L {
        for i in 0..N {
            levels[N * j + i] = if flat[j] { 0 } else { lv[i][j] };
        }
    }
    std::array::from_fn(|j| {
        if flat[j] {
            (0.0, -min[j])
        } else {
            (scale[j], -min[j])
        }
    })
}

/// `make_qx_quants(32, x_j, levels_j, rmse_type = 1, no weights)` for the sixteen 16-value
/// sub-blocks `j` of a Q6_K super-block (`x`: 256 values, sub-block `j` at `16 j..16 j + 16`),
/// one per lane, each lane the reference's operations in its order: writes `level + 32` of
/// sub-block `j` to `levels[16 j..16 j + 16]` and returns the sixteen scales.
pub(super) fn make_qx_quants_x16(x: &[f32], levels: &mut [i8]) -> [f32; 16] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { x16_avx2(x, levels) };
    }
    x16(x, levels)
}

/// [`x16`] compiled for AVX2 (the same IEEE operations, so the same bits).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn x16_avx2(x: &[f32], levels: &mut [i8]) -> [f32; 16] {
    x16(x, levels)
}

/// The body of [`make_qx_quants_x16`].
#[inline(always)]
fn x16(x: &[f32], levels: &mut [i8]) -> [f32; 16] {
    const LANES: usize = 16;
    const VALUES: usize = 16;
    const NMAX: i32 = 32;
    const GROUP_MAX_EPS: f32 = 1e-15;
    let xt: [[f32; LANES]; VALUES] =
        std::array::from_fn(|i| std::array::from_fn(|j| x[VALUES * j + i]));
    let mut max = [0f32; LANES];
    let mut amax = [0f32; LANES];
    for row in &xt {
        for j in 0..LANES {
            if row[j].abs() > amax[j] {
                amax[j] = row[j].abs();
                max[j] = row[j];
            }
        }
    }
    let flat: [bool; LANES] = std::array::from_fn(|j| amax[j] < GROUP_MAX_EPS);
    let level_of = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-NMAX, NMAX - 1);
    // Levels and sums at `iscale` per lane.
    let sums = |iscale: &[f32; LANES], lv: &mut [[i8; LANES]; VALUES]| {
        let (mut sumlx, mut suml2) = ([0f32; LANES], [0f32; LANES]);
        for (row, lv) in xt.iter().zip(lv.iter_mut()) {
            for j in 0..LANES {
                let l = level_of(iscale[j], row[j]);
                lv[j] = (l + NMAX) as i8;
                let (v, l) = (row[j], l as f32);
                let w = v * v;
                sumlx[j] += w * v * l;
                suml2[j] += w * l * l;
            }
        }
        (sumlx, suml2)
    };
    let mut best_levels = [[0i8; LANES]; VALUES];
    let mut candidate = [[0i8; LANES]; VALUES];
    let iscale: [f32; LANES] = std::array::from_fn(|j| -(NMAX as f32) / max[j]);
    let (sumlx, suml2) = sums(&iscale, &mut best_levels);
    let mut scale: [f32; LANES] = std::array::from_fn(|j| {
        if suml2[j] != 0.0 {
            sumlx[j] / suml2[j]
        } else {
            0.0
        }
    });
    let mut best: [f32; LANES] = std::array::from_fn(|j| scale[j] * sumlx[j]);
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale: [f32; LANES] =
            std::array::from_fn(|j| -(NMAX as f32 + 0.1 * is as f32) / max[j]);
        let (sumlx, suml2) = sums(&iscale, &mut candidate);
        for j in 0..LANES {
            if suml2[j] > 0.0 && sumlx[j] * sumlx[j] > best[j] * suml2[j] {
                for (b, c) in best_levels.iter_mut().zip(&candidate) {
                    b[j] = c[j];
                }
                scale[j] = sumlx[j] / suml2[j];
                best[j] = scale[j] * sumlx[j];
            }
        }
    }
    for j in 0..LANES {
        for i in 0..VALUES {
            levels[VALUES * j + i] = if flat[j] { 0 } else { best_levels[i][j] };
        }
    }
    std::array::from_fn(|j| if flat[j] { 0.0 } else { scale[j] })
}

#[cfg(test)]
mod tests {
    use super::super::k_quants::{
        quantize_q4_k, quantize_q4_k_scalar, quantize_q6_k, quantize_q6_k_scalar,
    };

    /// xorshift64*, as f32 in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            bits as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    /// Super-blocks that reach every branch: random values over many magnitudes, flat and
    /// all-zero sub-blocks beside others, one-sided values, outliers, exact ties on the
    /// level grid, subnormals.
    fn cases() -> Vec<[f32; 256]> {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut out = Vec::new();
        for scale in [1e-30f32, 1e-6, 1e-2, 1.0, 37.5, 1e4] {
            for _ in 0..40 {
                out.push(std::array::from_fn(|_| rng.next() * scale));
            }
        }
        out.push([0.0; 256]);
        out.push([3.25; 256]);
        out.push([-0.75; 256]);
        out.push(std::array::from_fn(|i| {
            if i / 32 % 2 == 0 {
                0.0
            } else {
                rng.next()
            }
        }));
        out.push(std::array::from_fn(|i| {
            if i / 32 == 3 {
                5.0
            } else {
                rng.next()
            }
        }));
        out.push(std::array::from_fn(|_| rng.next().abs()));
        out.push(std::array::from_fn(|_| -rng.next().abs() * 3.0));
        out.push(std::array::from_fn(|i| {
            if i % 97 == 0 {
                500.0
            } else {
                rng.next()
            }
        }));
        out.push(std::array::from_fn(|i| (i % 16) as f32 * 0.5 - 4.0));
        out.push(std::array::from_fn(|i| (i % 7) as f32));
        out.push(std::array::from_fn(|i| f32::from_bits(1 + i as u32)));
        out
    }

    #[test]
    fn lanes_give_the_bytes_of_the_scalar_references() {
        for (n, x) in cases().iter().enumerate() {
            let (mut lanes, mut scalar) = ([0u8; 144], [0u8; 144]);
            quantize_q4_k(x, &mut lanes);
            quantize_q4_k_scalar(x, &mut scalar);
            assert_eq!(lanes, scalar, "case {n}");
            let (mut lanes, mut scalar) = ([0u8; 210], [0u8; 210]);
            quantize_q6_k(x, &mut lanes);
            quantize_q6_k_scalar(x, &mut scalar);
            assert_eq!(lanes, scalar, "q6_k case {n}");
        }
    }
}
