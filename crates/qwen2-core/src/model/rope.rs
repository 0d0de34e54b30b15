//! Rotary position embeddings in Qwen2's half-split layout (`rotate_half`), with cos/sin tables
//! computed once at load time in f32, including YaRN frequency scaling.

use burn::prelude::{Backend, Tensor};
use burn::tensor::{FloatDType, TensorData};

use crate::config::{Qwen2Config, RopeScaling, YarnParams};

/// Precomputed cos/sin tables for every position the model can see.
pub struct Rope<B: Backend> {
    /// `cos(pos * inv_freq) * attention_factor`, `[max_positions, head_dim / 2]`, f32.
    pub cos: Tensor<B, 2>,
    /// `sin(pos * inv_freq) * attention_factor`, `[max_positions, head_dim / 2]`, f32.
    pub sin: Tensor<B, 2>,
    half: usize,
}

/// Inverse frequencies (`[head_dim / 2]`) and the cos/sin scale, as transformers computes them (in f32).
pub fn inverse_frequencies(config: &Qwen2Config) -> (Vec<f32>, f32) {
    let dim = config.head_dim;
    let base = config.rope_theta;
    let pos_freqs: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| (base as f32).powf(i as f32 / dim as f32))
        .collect();
    match &config.rope_scaling {
        RopeScaling::Default => (pos_freqs.iter().map(|p| 1.0 / p).collect(), 1.0),
        RopeScaling::Yarn(y) => yarn(y, dim, base, &pos_freqs),
    }
}

fn yarn(y: &YarnParams, dim: usize, base: f64, pos_freqs: &[f32]) -> (Vec<f32>, f32) {
    let attention_factor = y.attention_factor.unwrap_or(if y.factor <= 1.0 {
        1.0
    } else {
        0.1 * y.factor.ln() + 1.0
    });
    let correction_dim = |rotations: f64| {
        (dim as f64
            * (y.original_max_position_embeddings as f64
                / (rotations * 2.0 * std::f64::consts::PI))
                .ln())
            / (2.0 * base.ln())
    };
    let (mut low, mut high) = (correction_dim(y.beta_fast), correction_dim(y.beta_slow));
    if y.truncate {
        low = low.floor();
        high = high.ceil();
    }
    let low = low.max(0.0) as f32;
    let mut high = high.min(dim as f64 - 1.0) as f32;
    if low == high {
        high += 0.001;
    }
    let inv = pos_freqs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
            let extrapolation_factor = 1.0 - ramp;
            let extrapolation = 1.0 / p;
            let interpolation = 1.0 / (y.factor as f32 * p);
            interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
        })
        .collect();
    (inv, attention_factor as f32)
}

impl<B: Backend> Rope<B> {
    /// Builds the tables for positions `0..max_positions`.
    pub fn new(config: &Qwen2Config, max_positions: usize, device: &B::Device) -> Self {
        let (inv_freq, scale) = inverse_frequencies(config);
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for f in &inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos() * scale);
                sin.push(angle.sin() * scale);
            }
        }
        let table = |v: Vec<f32>| {
            Tensor::from_data(
                TensorData::new(v, [max_positions, half]),
                (device, FloatDType::F32.into()),
            )
        };
        Rope {
            cos: table(cos),
            sin: table(sin),
            half,
        }
    }

    /// Number of positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates `x`: `[batch, heads, seq, head_dim]` at absolute positions `start..start + seq`
    /// (the same for every row). Computed in f32; returns f32.
    pub fn apply(&self, x: Tensor<B, 4>, start: usize) -> Tensor<B, 4> {
        let [batch, heads, seq, dim] = x.dims();
        let x = x.cast(FloatDType::F32);
        let table = |t: &Tensor<B, 2>| {
            t.clone()
                .slice([start..start + seq, 0..self.half])
                .unsqueeze_dim::<3>(0)
                .unsqueeze_dim::<4>(0)
        };
        let (cos, sin) = (table(&self.cos), table(&self.sin));
        let x1 = x.clone().slice([0..batch, 0..heads, 0..seq, 0..self.half]);
        let x2 = x.slice([0..batch, 0..heads, 0..seq, self.half..dim]);
        let first = x1.clone() * cos.clone() - x2.clone() * sin.clone();
        let second = x2 * cos + x1 * sin;
        Tensor::cat(vec![first, second], 3)
    }
}
