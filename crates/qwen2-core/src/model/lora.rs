//! LoRA adapters as PEFT defines them: `y += scale · dropout(x) Aᵀ Bᵀ`, `scale = alpha / r`,
//! A initialised Kaiming-uniform (a = √5, i.e. U(-1/√in, 1/√in)), B zeros.

use std::sync::{Arc, Mutex};

use burn::prelude::{Backend, Tensor};
use burn::tensor::{FloatDType, TensorData};

use crate::sampling::SplitMix64;

/// Dropout on the adapter's input, drawn from a seeded generator so runs repeat exactly.
/// Active only while a trainer holds it switched on.
#[derive(Clone)]
pub struct LoraDropout {
    /// Probability of zeroing an input value.
    pub p: f64,
    state: Arc<Mutex<DropoutState>>,
}

struct DropoutState {
    active: bool,
    rng: SplitMix64,
}

impl LoraDropout {
    /// Dropout with probability `p`, drawing from `seed`; starts inactive (inference).
    pub fn new(p: f64, seed: u64) -> Self {
        LoraDropout {
            p,
            state: Arc::new(Mutex::new(DropoutState {
                active: false,
                rng: SplitMix64(seed),
            })),
        }
    }

    /// Switches dropout on (training) or off (evaluation) and reseeds it.
    pub fn set(&self, active: bool, seed: u64) {
        let mut s = self.state.lock().expect("dropout state");
        s.active = active;
        s.rng = SplitMix64(seed);
    }

    fn apply<B: Backend>(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let mut s = self.state.lock().expect("dropout state");
        if !s.active || self.p <= 0.0 {
            return x;
        }
        let [rows, cols] = x.dims();
        let keep = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = (0..rows * cols)
            .map(|_| {
                if s.rng.next_f64() < self.p {
                    0.0
                } else {
                    keep as f32
                }
            })
            .collect();
        let dtype = x.dtype();
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [rows, cols]), &x.device());
        x * mask.cast(dtype)
    }
}

/// One adapter on one projection.
pub struct LoraAdapter<B: Backend> {
    /// `lora_A.weight`, `[r, in]`.
    pub a: Tensor<B, 2>,
    /// `lora_B.weight`, `[out, r]`.
    pub b: Tensor<B, 2>,
    /// `alpha / r`.
    pub scale: f64,
    /// Input dropout (training only), if `lora_dropout > 0`.
    pub dropout: Option<LoraDropout>,
}

impl<B: Backend> LoraAdapter<B> {
    /// PEFT's initialisation for an `[in] → [out]` projection: A ~ U(-1/√in, 1/√in) (Kaiming
    /// uniform with a = √5), B = 0, both f32.
    pub fn init(
        inp: usize,
        out: usize,
        r: usize,
        alpha: f64,
        rng: &mut SplitMix64,
        device: &B::Device,
    ) -> Self {
        let bound = 1.0 / (inp as f64).sqrt();
        let a: Vec<f32> = (0..r * inp)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
            .collect();
        LoraAdapter {
            a: Tensor::from_data(
                TensorData::new(a, [r, inp]),
                (device, FloatDType::F32.into()),
            ),
            b: Tensor::zeros([out, r], (device, FloatDType::F32.into())),
            scale: alpha / r as f64,
            dropout: None,
        }
    }

    /// Rank of the adapter.
    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// `x` `[rows, in]` → `scale · (dropout(x) Aᵀ) Bᵀ`, `[rows, out]` in `compute`.
    pub fn forward(&self, x: Tensor<B, 2>, compute: FloatDType) -> Tensor<B, 2> {
        let x = match &self.dropout {
            Some(d) => d.apply(x),
            None => x,
        };
        let down = x.matmul(self.a.clone().cast(compute).transpose());
        let up = down.matmul(self.b.clone().cast(compute).transpose());
        up * self.scale
    }
}
