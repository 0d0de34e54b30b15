//! RMSNorm in one pass over each row, as the graph computes it (`qwen2_core::model::RmsNorm`):
//! the row widened to f32, `x · 1/sqrt(mean(x²) + eps)` in f32, rounded to the output dtype,
//! times the weight (rounded to the output dtype) and rounded again. The graph runs five
//! burn-flex ops and two casts on one thread for this; here rows run in parallel.
//!
//! The mean of squares sums sixteen lanes and then the lanes, not burn's order: the mean
//! differs in the last bits of f32, which can move an output by one step of the output dtype.

use crate::host::{primitive, to_f32, zip_chunks, Round};
use burn::prelude::Tensor;
use burn::tensor::{FloatDType, TensorData};
use burn_flex::Flex;
use half::bf16;

/// Rows per parallel task (a few KB each at hidden sizes of 896 and up).
const ROWS_PER_TASK: usize = 4;

/// RMSNorm of `x` `[rows, hidden]` with `weight` `[hidden]`, statistics in f32, output in `out`
/// (f32, bf16 or f16); `None` for other norm or output dtypes.
pub(crate) fn rms_norm(
    x: &Tensor<Flex, 2>,
    weight: &Tensor<Flex, 1>,
    eps: f64,
    norm: FloatDType,
    out: FloatDType,
) -> Option<Tensor<Flex, 2>> {
    let round = Round::of(out)?;
    if norm != FloatDType::F32 {
        return None;
    }
    let [rows, hidden] = x.dims();
    if weight.dims() != [hidden] || hidden == 0 {
        return None;
    }
    // The weight as the graph multiplies it: cast to the output dtype.
    let w: Vec<f32> = to_f32(weight).into_iter().map(|v| round.apply(v)).collect();
    let eps = eps as f32;
    let xp = primitive(x);
    let device = Default::default();
    let shape = [rows, hidden];
    let normalize = |src: &[f32], dst: &mut [f32]| normalize_row(src, &w, eps, round, dst);
    if let (Some(src), Round::Bf16) = (xp.as_slice::<bf16>(), round) {
        // bf16 in, bf16 out: no f32 copy of either.
        let mut y = vec![bf16::ZERO; rows * hidden];
        let task = hidden * ROWS_PER_TASK;
        zip_chunks(&mut y, src, task, task, |dst, src| {
            let (mut wide, mut normed) = (vec![0.0f32; hidden], vec![0.0f32; hidden]);
            for (dst, src) in dst.chunks_mut(hidden).zip(src.chunks(hidden)) {
                for (w, s) in wide.iter_mut().zip(src) {
                    *w = s.to_f32();
                }
                normalize(&wide, &mut normed);
                for (d, &v) in dst.iter_mut().zip(&normed) {
                    *d = bf16::from_bits((v.to_bits() >> 16) as u16);
                }
            }
        });
        let data = TensorData::new(y, shape);
        return Some(Tensor::from_data(data, (&device, out.into())));
    }
    let src = to_f32(x);
    let mut y = vec![0.0f32; rows * hidden];
    let task = hidden * ROWS_PER_TASK;
    zip_chunks(&mut y, &src, task, task, |dst, src| {
        for (dst, src) in dst.chunks_mut(hidden).zip(src.chunks(hidden)) {
            normalize(src, dst);
        }
    });
    Some(crate::host::from_f32(y, shape, out))
}

/// One row: `dst = round(round(src · inv) · w)` with `inv = 1 / sqrt(mean(src²) + eps)`.
#[inline]
fn normalize_row(src: &[f32], w: &[f32], eps: f32, round: Round, dst: &mut [f32]) {
    let mut lanes = [0.0f32; 16];
    let mut chunks = src.chunks_exact(16);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    let sum = lanes.iter().sum::<f32>() + tail;
    let mean = sum / src.len() as f32;
    let inv = 1.0 / (mean + eps).sqrt();
    match round {
        Round::F32 => {
            for ((d, &s), &w) in dst.iter_mut().zip(src).zip(w) {
                *d = s * inv * w;
            }
        }
        Round::Bf16 => {
            let r = crate::host::round_bf16;
            for ((d, &s), &w) in dst.iter_mut().zip(src).zip(w) {
                *d = r(r(s * inv) * w);
            }
        }
        Round::F16 => {
            for ((d, &s), &w) in dst.iter_mut().zip(src).zip(w) {
                *d = round.apply(round.apply(s * inv) * w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;
    use qwen2_core::model::RmsNorm;

    use super::*;

    #[test]
    fn rms_norm_matches_the_graph_within_a_few_steps_of_the_output_dtype() {
        let dev = Default::default();
        for (rows, hidden) in [(1, 896), (7, 40), (33, 100)] {
            for (input, out, step) in [
                (FloatDType::F32, FloatDType::F32, 2.0f32.powi(-21)),
                (FloatDType::BF16, FloatDType::BF16, 2.0f32.powi(-7)),
                (FloatDType::F32, FloatDType::BF16, 2.0f32.powi(-7)),
                (FloatDType::F16, FloatDType::F16, 2.0f32.powi(-10)),
            ] {
                // Fixed values, with a massive activation in channel 3 as Qwen2 has.
                let xs: Vec<f32> = (0..rows * hidden)
                    .map(|i| match i % hidden {
                        3 => 3000.0,
                        _ => ((i as f32) * 0.7311).sin() * 1.7,
                    })
                    .collect();
                let x = Tensor::<Flex, 2>::from_data(TensorData::new(xs, [rows, hidden]), &dev)
                    .cast(input);
                let ws: Vec<f32> = (0..hidden)
                    .map(|i| 1.0 + ((i as f32) * 1.37).cos() * 0.6)
                    .collect();
                let w = Tensor::<Flex, 1>::from_data(TensorData::new(ws, [hidden]), &dev).cast(out);
                let graph = RmsNorm {
                    weight: w.clone(),
                    eps: 1e-6,
                    kernels: None,
                }
                .forward(x.clone(), FloatDType::F32, out);
                let fused = rms_norm(&x, &w, 1e-6, FloatDType::F32, out).expect("handled");
                assert_eq!(fused.dtype(), graph.dtype());
                let (a, b) = (to_f32(&fused), to_f32(&graph));
                let mut moved = 0;
                for (a, b) in a.iter().zip(&b) {
                    // The same value, or apart by one step of the normalised value (rounded
                    // before the weight, which carries it up to 1.6×) and one of the product.
                    assert!(
                        (a - b).abs() <= 3.0 * step * b.abs().max(1e-30),
                        "{a} vs {b}"
                    );
                    moved += usize::from(a != b);
                }
                // In f32 every output moves by a few ulps with the mean; in a narrower dtype
                // only the few that sit near a rounding boundary do.
                if out != FloatDType::F32 {
                    assert!(
                        moved * 20 <= a.len(),
                        "{out:?}: {moved} of {} moved",
                        a.len()
                    );
                }
            }
        }
        // Not f32 statistics: left to the graph.
        let x = Tensor::<Flex, 2>::random([2, 8], Distribution::Default, &dev);
        let w = Tensor::<Flex, 1>::ones([8], &dev);
        assert!(rms_norm(&x, &w, 1e-6, FloatDType::BF16, FloatDType::BF16).is_none());
    }
}
