//! SwiGLU MLP: `down(silu(gate(x)) * up(x))`.

use burn::prelude::{Backend, Tensor};
use burn::tensor::activation::silu;
use burn::tensor::FloatDType;

use std::sync::Arc;

use super::fused::FusedKernels;
use super::linear::Linear;
use super::quantized::WeightQuantization;
use crate::config::Qwen2Config;
use crate::error::Result;
use crate::observe::{Observer, Op, Site};
use crate::weights::Checkpoint;

/// `model.layers.N.mlp`.
pub struct Mlp<B: Backend> {
    /// `[hidden, intermediate]`, no bias.
    pub gate_proj: Linear<B>,
    /// `[hidden, intermediate]`, no bias.
    pub up_proj: Linear<B>,
    /// `[intermediate, hidden]`, no bias.
    pub down_proj: Linear<B>,
    /// A fused SwiGLU, installed by the backend.
    pub kernels: Option<Arc<dyn FusedKernels<B>>>,
}

impl<B: Backend> Mlp<B> {
    /// Loads `{prefix}.{gate,up,down}_proj`.
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        c: &Qwen2Config,
        dtype: FloatDType,
        quant: WeightQuantization,
        device: &B::Device,
    ) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let lin = |name: &str, inp, out| {
            Linear::load(
                ckpt,
                &format!("{prefix}.{name}"),
                inp,
                out,
                false,
                dtype,
                quant,
                device,
            )
        };
        Ok(Mlp {
            gate_proj: lin("gate_proj", h, i)?,
            up_proj: lin("up_proj", h, i)?,
            down_proj: lin("down_proj", i, h)?,
            kernels: None,
        })
    }

    /// `x`: `[seq, hidden]` → `[seq, hidden]`; gate/up in `compute` dtype, `down_proj` (inputs,
    /// weight and output) in `output` dtype.
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        compute: FloatDType,
        output: FloatDType,
        layer: usize,
        obs: &mut dyn Observer<B>,
    ) -> Tensor<B, 2> {
        let (gate_site, up_site) = (
            Site::layer(layer, Op::MlpGate),
            Site::layer(layer, Op::MlpUp),
        );
        let plain = |l: &Linear<B>| l.bias.is_none() && l.lora.is_none();
        let fused = self
            .gate_proj
            .kernel
            .as_ref()
            .filter(|_| plain(&self.gate_proj) && plain(&self.up_proj))
            .filter(|_| !obs.wants(gate_site) && !obs.wants(up_site))
            .and_then(|k| {
                let x = x.clone().cast(compute);
                k.matmul_swiglu(&x, &self.gate_proj.weight, &self.up_proj.weight, compute)
            });
        let act = match fused {
            Some(act) => act,
            None => {
                let gate = self.gate_proj.forward(x.clone(), compute);
                let gate = observe(obs, gate_site, gate);
                let up = self.up_proj.forward(x, compute);
                let up = observe(obs, up_site, up);
                match &self.kernels {
                    Some(k) if k.swiglu_supported(gate.dtype().into()) => k.swiglu(&gate, &up),
                    _ => silu(gate) * up,
                }
            }
        };
        let down = self.down_proj.forward(act, output);
        observe(obs, Site::layer(layer, Op::MlpDown), down)
    }
}

/// Hands `t` to the observer if it wants `site`, and returns what the observer makes of it
/// (the tensor itself, or an identity op whose backward checks the gradient).
pub(crate) fn observe<B: Backend>(
    obs: &mut dyn Observer<B>,
    site: Site,
    t: Tensor<B, 2>,
) -> Tensor<B, 2> {
    if obs.wants(site) {
        obs.observe(site, &t);
    }
    obs.transform(site, t)
}
