//! AdamW and global-norm gradient clipping with PyTorch's exact semantics:
//! `torch.optim.AdamW` (single-tensor path, f32 state) and `torch.nn.utils.clip_grad_norm_`.
//! burn's own AdamW keeps its moments in the gradient's dtype, defaults to other constants and
//! clips per tensor, so the trainer uses this one.

use burn::prelude::{Backend, Tensor};
use burn::tensor::FloatDType;

/// AdamW hyper-parameters (PyTorch's defaults, except `weight_decay`, which HF's Trainer and
/// this crate default to 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε, added to √v̂.
    pub eps: f64,
    /// Decoupled weight decay: `w ← w · (1 − lr · wd)` before the Adam update.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// First and second moments of one parameter, flattened, f32.
#[derive(Clone)]
pub struct Moments<B: Backend> {
    /// `exp_avg`, `[numel]`.
    pub m: Tensor<B, 1>,
    /// `exp_avg_sq`, `[numel]`.
    pub v: Tensor<B, 1>,
}

impl AdamWConfig {
    /// One AdamW update of `param` (flattened `[numel]`, f32) with gradient `grad` at 1-based
    /// step `t`, as `torch.optim.adamw._single_tensor_adamw` computes it.
    pub fn update<B: Backend>(
        &self,
        param: Tensor<B, 1>,
        grad: Tensor<B, 1>,
        state: &mut Moments<B>,
        lr: f64,
        t: usize,
    ) -> Tensor<B, 1> {
        let param = if self.weight_decay != 0.0 {
            param * (1.0 - lr * self.weight_decay)
        } else {
            param
        };
        // exp_avg.lerp_(grad, 1 - beta1)
        let m = state.m.clone();
        let m = m.clone() + (grad.clone() - m) * (1.0 - self.beta1);
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        let v = state.v.clone() * self.beta2 + grad.clone() * grad * (1.0 - self.beta2);
        let bias1 = 1.0 - self.beta1.powi(t as i32);
        let bias2 = 1.0 - self.beta2.powi(t as i32);
        let step_size = lr / bias1;
        let denom = v.clone().sqrt() / bias2.sqrt() + self.eps;
        let param = param - (m.clone() / denom) * step_size;
        state.m = m;
        state.v = v;
        param
    }
}

impl<B: Backend> Moments<B> {
    /// Zeros for a parameter of `numel` values.
    pub fn zeros(numel: usize, device: &B::Device) -> Self {
        let z = || Tensor::zeros([numel], (device, FloatDType::F32.into()));
        Moments { m: z(), v: z() }
    }
}

/// The global L2 norm of all `grads` (`[numel]` each, f32), as `clip_grad_norm_` computes it
/// (the norm of the per-tensor norms).
pub fn global_norm<B: Backend>(grads: &[Tensor<B, 1>]) -> f64 {
    finite_and_norm(grads).1
}

/// Whether every gradient value is finite (GradScaler's `found_inf` check), and the global
/// norm, from one read back to the host. `x − x` is 0 for finite values and NaN for inf/NaN,
/// so one sum per tensor tells whether it holds any.
pub fn finite_and_norm<B: Backend>(grads: &[Tensor<B, 1>]) -> (bool, f64) {
    if grads.is_empty() {
        return (true, 0.0);
    }
    let mut parts = Vec::with_capacity(grads.len() * 2);
    for g in grads {
        parts.push((g.clone() - g.clone()).sum());
        parts.push(g.clone().square().sum().sqrt());
    }
    let values = Tensor::cat(parts, 0)
        .into_data()
        .to_vec::<f32>()
        .expect("f32 gradients");
    let finite = values.iter().step_by(2).all(|v| *v == 0.0);
    let norms: Vec<f64> = values
        .iter()
        .skip(1)
        .step_by(2)
        .map(|&v| v as f64)
        .collect();
    // torch: the norm of the per-tensor norms, in f32.
    let total = norms
        .iter()
        .map(|n| (*n as f32) * (*n as f32))
        .sum::<f32>()
        .sqrt() as f64;
    (finite, total)
}

/// `clip_grad_norm_`'s factor: `min(1, max_norm / (total + 1e-6))`; `None` when clipping is
/// off (`max_norm <= 0`) or the norm is within bounds (torch's multiplication by 1 is exact).
pub fn clip_factor(total_norm: f64, max_norm: f64) -> Option<f64> {
    if max_norm <= 0.0 {
        return None;
    }
    // torch computes the coefficient in f32.
    let coef = (max_norm as f32) / (total_norm as f32 + 1e-6);
    (coef < 1.0).then_some(coef as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use burn_flex::Flex;

    fn t(v: &[f32]) -> Tensor<Flex, 1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
    }

    #[test]
    fn adamw_matches_torch_by_hand() {
        // torch.optim.AdamW([p], lr=0.1, weight_decay=0.01), p = [1, -2], grads [0.5, 0.25]
        // then [0.1, -0.3]; values from the formulas in f64.
        let cfg = AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut st = Moments::<Flex>::zeros(2, &Default::default());
        let mut p = t(&[1.0, -2.0]);
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for (step, g) in [[0.5f64, 0.25], [0.1, -0.3]].iter().enumerate() {
            p = cfg.update(p, t(&[g[0] as f32, g[1] as f32]), &mut st, 0.1, step + 1);
            for i in 0..2 {
                expect[i] *= 1.0 - 0.1 * 0.01;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                let bc1 = 1.0 - 0.9f64.powi(step as i32 + 1);
                let bc2 = 1.0 - 0.999f64.powi(step as i32 + 1);
                expect[i] -= 0.1 / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + 1e-8);
            }
        }
        let got = p.into_data().to_vec::<f32>().unwrap();
        for i in 0..2 {
            assert!(
                (got[i] as f64 - expect[i]).abs() < 1e-6,
                "{got:?} vs {expect:?}"
            );
        }
    }

    #[test]
    fn global_norm_and_clip() {
        let n = global_norm(&[t(&[3.0]), t(&[4.0, 0.0])]);
        assert!((n - 5.0).abs() < 1e-6);
        let c = clip_factor(n, 1.0).unwrap();
        assert!((c - 1.0 / (5.0 + 1e-6)).abs() < 1e-7);
        assert_eq!(clip_factor(n, 10.0), None);
        assert_eq!(clip_factor(n, 0.0), None);
    }
}
