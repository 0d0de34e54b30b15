//! Every weight of the model by its HF name, for trainers, savers and adapters.

use burn::prelude::{Backend, Tensor};

use super::linear::Linear;
use super::quantized::ProjectionWeight;
use super::Qwen2Model;

/// What a weight is to a trainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightKind {
    /// A weight of the checkpoint (trained in full fine-tuning, frozen under LoRA).
    Base,
    /// A LoRA `lora_A.weight`, `[r, in]`.
    LoraA,
    /// A LoRA `lora_B.weight`, `[out, r]`.
    LoraB,
}

/// A mutable weight handed to a visitor.
pub enum WeightMut<'a, B: Backend> {
    /// A norm weight or bias, `[n]`.
    Vector(&'a mut Tensor<B, 1>),
    /// A matrix in HF's `[out, in]` layout (embedding: `[vocab, hidden]`).
    Matrix(&'a mut Tensor<B, 2>),
}

impl<B: Backend> Qwen2Model<B> {
    /// Calls `f(name, kind, weight)` for every weight by its HF name
    /// (`model.embed_tokens.weight`, the norms, `model.norm.weight`, then every projection's
    /// `.weight` and `.bias`, `lm_head.weight` when untied); LoRA weights follow the projection
    /// they adapt, as `...q_proj.lora_A.weight` / `lora_B.weight`. Projections kept quantized
    /// ([`Qwen2Model::is_quantized`]) are not visited: trainers and savers load models dense.
    pub fn visit_weights(&mut self, f: &mut dyn FnMut(&str, WeightKind, WeightMut<'_, B>)) {
        if let ProjectionWeight::Dense(embed) = &mut self.embed_tokens {
            f(
                "model.embed_tokens.weight",
                WeightKind::Base,
                WeightMut::Matrix(embed),
            );
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (name, norm) in [
                ("input_layernorm", &mut layer.input_layernorm),
                (
                    "post_attention_layernorm",
                    &mut layer.post_attention_layernorm,
                ),
            ] {
                let name = format!("model.layers.{i}.{name}.weight");
                f(&name, WeightKind::Base, WeightMut::Vector(&mut norm.weight));
            }
        }
        f(
            "model.norm.weight",
            WeightKind::Base,
            WeightMut::Vector(&mut self.norm.weight),
        );
        self.visit_linears(&mut |prefix, lin| visit_linear(prefix, lin, f));
    }

    /// Folds every attached LoRA adapter into its projection (`W ← W + scale · B A`, computed
    /// in f32 and stored back in the weight's dtype) and detaches it.
    pub fn merge_adapters(&mut self) {
        self.visit_linears(&mut |_, lin| {
            let ProjectionWeight::Dense(weight) = &mut lin.weight else {
                // Quantized weights serve inference only: the adapter stays attached.
                return;
            };
            if let Some(lora) = lin.lora.take() {
                let f32 = burn::tensor::FloatDType::F32;
                let dtype = weight.dtype();
                let delta = lora.b.cast(f32).matmul(lora.a.cast(f32)) * lora.scale;
                *weight = (weight.clone().cast(f32) + delta).cast(dtype);
            }
        });
    }

    /// Every projection that can carry a LoRA adapter, by HF module path
    /// (`model.layers.0.self_attn.q_proj`, ..., `lm_head` when untied).
    pub fn visit_linears(&mut self, f: &mut dyn FnMut(&str, &mut Linear<B>)) {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let a = &mut layer.self_attn;
            for (name, lin) in [
                ("q_proj", &mut a.q_proj),
                ("k_proj", &mut a.k_proj),
                ("v_proj", &mut a.v_proj),
                ("o_proj", &mut a.o_proj),
            ] {
                f(&format!("model.layers.{i}.self_attn.{name}"), lin);
            }
            let m = &mut layer.mlp;
            for (name, lin) in [
                ("gate_proj", &mut m.gate_proj),
                ("up_proj", &mut m.up_proj),
                ("down_proj", &mut m.down_proj),
            ] {
                f(&format!("model.layers.{i}.mlp.{name}"), lin);
            }
        }
        if let Some(head) = &mut self.lm_head {
            f("lm_head", head);
        }
    }
}

fn visit_linear<B: Backend>(
    prefix: &str,
    lin: &mut Linear<B>,
    f: &mut dyn FnMut(&str, WeightKind, WeightMut<'_, B>),
) {
    // Quantized weights (inference only) are not visited: see `Qwen2Model::is_quantized`.
    if let ProjectionWeight::Dense(weight) = &mut lin.weight {
        f(
            &format!("{prefix}.weight"),
            WeightKind::Base,
            WeightMut::Matrix(weight),
        );
    }
    if let Some(bias) = &mut lin.bias {
        f(
            &format!("{prefix}.bias"),
            WeightKind::Base,
            WeightMut::Vector(bias),
        );
    }
    if let Some(lora) = &mut lin.lora {
        f(
            &format!("{prefix}.lora_A.weight"),
            WeightKind::LoraA,
            WeightMut::Matrix(&mut lora.a),
        );
        f(
            &format!("{prefix}.lora_B.weight"),
            WeightKind::LoraB,
            WeightMut::Matrix(&mut lora.b),
        );
    }
}
