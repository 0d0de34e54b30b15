//! Fused SwiGLU, RoPE and causal attention on host memory (RMSNorm: `crate::norm`).
//!
//! burn-flex runs the generic graph's small ops one by one and walks strided views (the
//! head-split `swap_dims`, RoPE's half slices) element by element; at a 128-token prefill of
//! the 0.5B model that cost more than the attention projections themselves. These loops read
//! each tensor once, round to the plan's dtypes at the points the graph does, and split the
//! work across the rayon pool.

use std::sync::Arc;

use burn::prelude::Tensor;
use burn::tensor::FloatDType;
use burn_flex::Flex;
use half::bf16;
use qwen2_core::model::FusedKernels;
use qwen2_core::precision::PrecisionPlan;
use rayon::prelude::*;

use crate::attention::{attend_all, AttentionParams, HeadRows};
use crate::host::{from_f32, primitive, round_bf16, to_f32, zip_chunks, Round};

/// The CPU's [`FusedKernels`].
pub struct CpuFused;

/// Kernels for [`qwen2_core::Platform::fused_kernels`].
pub fn kernels() -> Arc<dyn FusedKernels<Flex>> {
    Arc::new(CpuFused)
}

/// `e^x` for `x <= 0` (Cephes' single-precision polynomial, within 2 ulp of libm; results
/// below 2^-126 come out as about 1e-38 instead of 0; NaN stays NaN, so an overflow upstream
/// still reaches the stability monitor). Branch-free, so loops over it vectorize.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    let nan = x.is_nan();
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // `n` is an integer in [-126, 1]: added to 1.5 · 2^23 it lands in the low mantissa bits,
    // an integer conversion that vectorizes (`n as i32` saturates, which compiles to scalar
    // code lane by lane).
    let n = (n + 12_582_912.0).to_bits() as i32 - 0x4B40_0000;
    let e = y * f32::from_bits(((n + 127) as u32) << 23);
    if nan {
        f32::NAN
    } else {
        e
    }
}

/// The logistic function as burn-flex computes it (`1 / (1 + e^-x)` for `x >= 0`, `e^x / (1 +
/// e^x)` below), with [`exp_nonpositive`] for the exponential.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

/// `g = round(round(g * round(sigmoid(g))) * u)` over a slice, in the dtype `round` stands for.
pub(crate) fn swiglu_slice(g: &mut [f32], u: &[f32], round: Round) {
    #[inline(always)]
    fn with(g: &mut [f32], u: &[f32], r: impl Fn(f32) -> f32) {
        for (g, &u) in g.iter_mut().zip(u) {
            let silu = r(*g * r(sigmoid(*g)));
            *g = r(silu * u);
        }
    }
    #[inline(always)]
    fn any(g: &mut [f32], u: &[f32], round: Round) {
        match round {
            Round::F32 => with(g, u, |x| x),
            Round::Bf16 => with(g, u, round_bf16),
            Round::F16 => with(g, u, |x| Round::F16.apply(x)),
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(g: &mut [f32], u: &[f32], round: Round) {
        any(g, u, round)
    }
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { avx2(g, u, round) };
    }
    any(g, u, round)
}

impl FusedKernels<Flex> for CpuFused {
    fn swiglu_supported(&self, dtype: FloatDType) -> bool {
        Round::of(dtype).is_some()
    }

    fn swiglu(&self, gate: &Tensor<Flex, 2>, up: &Tensor<Flex, 2>) -> Tensor<Flex, 2> {
        let dtype: FloatDType = gate.dtype().into();
        let round = Round::of(dtype).unwrap_or(Round::F32);
        let mut out = to_f32(gate);
        let up = to_f32(up);
        zip_chunks(&mut out, &up, 1 << 15, 1 << 15, |g, u| {
            swiglu_slice(g, u, round)
        });
        from_f32(out, gate.dims(), dtype)
    }

    fn cache_write(
        &self,
        cache: &mut Tensor<Flex, 3>,
        start: usize,
        rows: &Tensor<Flex, 3>,
    ) -> bool {
        crate::cache::write_rows(cache, start, rows)
    }

    fn rms_norm(
        &self,
        x: &Tensor<Flex, 2>,
        weight: &Tensor<Flex, 1>,
        eps: f64,
        norm: FloatDType,
        out: FloatDType,
    ) -> Option<Tensor<Flex, 2>> {
        crate::norm::rms_norm(x, weight, eps, norm, out)
    }

    fn attention_supported(&self, plan: &PrecisionPlan) -> bool {
        let known = [plan.attention_scores, plan.matmul, plan.kv_cache]
            .iter()
            .all(|&d| Round::of(d).is_some());
        // Cached keys and values must reach the scores / matmul dtypes exactly.
        let exact = |to: FloatDType| to == plan.kv_cache || to == FloatDType::F32;
        known
            && plan.softmax == FloatDType::F32
            && exact(plan.attention_scores)
            && exact(plan.matmul)
    }

    fn rope(
        &self,
        x: &Tensor<Flex, 2>,
        heads: usize,
        cos: &Tensor<Flex, 2>,
        sin: &Tensor<Flex, 2>,
        start: usize,
    ) -> Tensor<Flex, 2> {
        let [seq, width] = x.dims();
        let dim = width / heads;
        let half = dim / 2;
        let mut out = to_f32(x);
        let (cos, sin) = (table_rows(cos, start, seq), table_rows(sin, start, seq));
        let rotate = |s: usize, row: &mut [f32]| {
            let (c, sn) = (&cos[s * half..][..half], &sin[s * half..][..half]);
            for head in row.chunks_exact_mut(dim) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * c[i] - b * sn[i];
                    x2[i] = b * c[i] + a * sn[i];
                }
            }
        };
        if seq == 1 {
            rotate(0, &mut out);
        } else {
            out.par_chunks_mut(width)
                .enumerate()
                .for_each(|(s, row)| rotate(s, row));
        }
        from_f32(out, [seq, width], FloatDType::F32)
    }

    fn attention(
        &self,
        q: &Tensor<Flex, 2>,
        keys: &Tensor<Flex, 3>,
        values: &Tensor<Flex, 3>,
        start: usize,
        plan: &PrecisionPlan,
    ) -> Tensor<Flex, 2> {
        let [seq, width] = q.dims();
        let [kv_heads, total, dim] = keys.dims();
        let heads = width / dim;
        let scores_round = Round::of(plan.attention_scores).unwrap_or(Round::F32);
        let matmul_round = Round::of(plan.matmul).unwrap_or(Round::F32);
        let mut q = to_f32(q);
        if scores_round != Round::F32 {
            q.iter_mut().for_each(|v| *v = scores_round.apply(*v));
        }
        let mut out = vec![0.0f32; seq * width];
        let params = AttentionParams {
            q: &q,
            heads,
            dim,
            group: heads / kv_heads,
            start,
            scale: scores_round.apply((1.0 / (dim as f64).sqrt()) as f32),
            scores_round,
            matmul_round,
        };
        debug_assert_eq!(start + seq, total);
        let (kp, vp) = (primitive(keys), primitive(values));
        // The f32 and bf16 caches are read in place; others (f16) through an f32 copy.
        if let (Some(k), Some(v)) = (HeadRows::<f32>::of(&kp), HeadRows::of(&vp)) {
            attend_all(&params, &k, &v, &mut out);
        } else if let (Some(k), Some(v)) = (HeadRows::<bf16>::of(&kp), HeadRows::of(&vp)) {
            attend_all::<bf16>(&params, &k, &v, &mut out);
        } else {
            let (kc, vc) = (to_f32(keys), to_f32(values));
            let k = HeadRows::contiguous(&kc, total, dim);
            let v = HeadRows::contiguous(&vc, total, dim);
            attend_all::<f32>(&params, &k, &v, &mut out);
        }
        from_f32(out, [seq, width], plan.matmul)
    }
}

/// Rows `start..start + seq` of a `[max_positions, half]` f32 table, as one slice.
fn table_rows(table: &Tensor<Flex, 2>, start: usize, seq: usize) -> Vec<f32> {
    let [_, half] = table.dims();
    to_f32(&table.clone().slice([start..start + seq, 0..half]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_sigmoid_stay_within_two_ulp_of_libm() {
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (ours, libm) = (exp_nonpositive(x), x.exp());
            assert!(
                (ours - libm).abs() <= 2.0 * f32::EPSILON * libm,
                "exp({x}) {ours} vs {libm}"
            );
            assert!(exp_nonpositive(f32::NAN).is_nan());
            for x in [x, -x] {
                let exact = 1.0 / (1.0 + (-x as f64).exp());
                let err = (sigmoid(x) as f64 - exact).abs();
                assert!(err <= 3.0 * f32::EPSILON as f64 * exact, "sigmoid({x})");
            }
        }
    }

    #[test]
    fn swiglu_rounds_like_the_graph() {
        let g: Vec<f32> = (0..1000).map(|i| i as f32 * 0.02 - 10.0).collect();
        let u: Vec<f32> = (0..1000).map(|i| 1.5 - i as f32 * 0.003).collect();
        for round in [Round::F32, Round::Bf16, Round::F16] {
            let mut out = g.clone();
            swiglu_slice(&mut out, &u, round);
            for ((o, &g), &u) in out.iter().zip(&g).zip(&u) {
                let exact = (g as f64 / (1.0 + (-g as f64).exp())) * u as f64;
                assert_eq!(*o, round.apply(*o), "{round:?}: result in the dtype");
                let step = match round {
                    Round::F32 => 4.0 * f32::EPSILON as f64,
                    Round::Bf16 => 2f64.powi(-6),
                    Round::F16 => 2f64.powi(-9),
                };
                assert!(
                    (*o as f64 - exact).abs() <= step * exact.abs() + 1e-30,
                    "{round:?} {g}"
                );
            }
        }
    }
}
