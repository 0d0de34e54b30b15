//! One decoder layer: pre-norm attention and MLP blocks around the residual stream.

use burn::prelude::{Backend, Tensor};
use burn::tensor::FloatDType;

use super::attention::Attention;
use super::batch::Batch;
use super::mlp::{observe, Mlp};
use super::norm::RmsNorm;
use super::quantized::WeightQuantization;
use super::rope::Rope;
use crate::config::Qwen2Config;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::observe::{Observer, Op, Site};
use crate::precision::PrecisionPlan;
use crate::weights::Checkpoint;

/// `model.layers.N`.
pub struct DecoderLayer<B: Backend> {
    /// Norm before attention, `[hidden]`.
    pub input_layernorm: RmsNorm<B>,
    /// Self-attention.
    pub self_attn: Attention<B>,
    /// Norm before the MLP, `[hidden]`.
    pub post_attention_layernorm: RmsNorm<B>,
    /// The MLP.
    pub mlp: Mlp<B>,
    index: usize,
}

impl<B: Backend> DecoderLayer<B> {
    /// Loads `model.layers.{index}`.
    pub fn load(
        ckpt: &Checkpoint,
        index: usize,
        c: &Qwen2Config,
        dtype: FloatDType,
        quant: WeightQuantization,
        device: &B::Device,
    ) -> Result<Self> {
        let p = format!("model.layers.{index}");
        let norm = |name: &str| {
            RmsNorm::load(
                ckpt,
                &format!("{p}.{name}"),
                c.hidden_size,
                c.rms_norm_eps,
                dtype,
                device,
            )
        };
        Ok(DecoderLayer {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention::load(ckpt, &format!("{p}.self_attn"), c, dtype, quant, device)?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
            mlp: Mlp::load(ckpt, &format!("{p}.mlp"), c, dtype, quant, device)?,
            index,
        })
    }

    /// `x`: residual stream `[batch * seq, hidden]` of `rows` at positions `start..`, in the
    /// residual dtype → the same, one layer on.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        rows: &Batch,
        start: usize,
        cache: Option<&mut KvCache<B>>,
        rope: &Rope<B>,
        plan: &PrecisionPlan,
        obs: &mut dyn Observer<B>,
    ) -> Tensor<B, 2> {
        let i = self.index;
        let x = self.attention_block(x, plan, obs, |h| {
            self.self_attn.forward(h, rows, start, i, cache, rope, plan)
        });
        self.mlp_block(x, plan, obs)
    }

    /// One decode step of several sequences: `x` `[n, hidden]` (residual dtype), row `r` at
    /// position `caches[r].len()` → the same, one layer on.
    pub fn forward_decode(
        &self,
        x: Tensor<B, 2>,
        caches: &mut [&mut KvCache<B>],
        rope: &Rope<B>,
        plan: &PrecisionPlan,
        obs: &mut dyn Observer<B>,
    ) -> Tensor<B, 2> {
        let i = self.index;
        let x = self.attention_block(x, plan, obs, |h| {
            self.self_attn.forward_decode(h, i, caches, rope, plan)
        });
        self.mlp_block(x, plan, obs)
    }

    /// The attention half: input norm, `attend` (normed `[n, hidden]` → attention output in the
    /// residual-projection dtype), residual add.
    fn attention_block(
        &self,
        x: Tensor<B, 2>,
        plan: &PrecisionPlan,
        obs: &mut dyn Observer<B>,
        attend: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let i = self.index;
        let h = self
            .input_layernorm
            .forward(x.clone(), plan.norm, plan.matmul);
        let h = observe(obs, Site::layer(i, Op::InputNorm), h);
        let attn = observe(obs, Site::layer(i, Op::AttentionOutput), attend(h));
        let x = x + attn.cast(plan.residual);
        observe(obs, Site::layer(i, Op::AttentionResidual), x)
    }

    /// The MLP half: post-attention norm, MLP, residual add.
    fn mlp_block(
        &self,
        x: Tensor<B, 2>,
        plan: &PrecisionPlan,
        obs: &mut dyn Observer<B>,
    ) -> Tensor<B, 2> {
        let i = self.index;
        let h = self
            .post_attention_layernorm
            .forward(x.clone(), plan.norm, plan.matmul);
        let h = observe(obs, Site::layer(i, Op::PostAttentionNorm), h);
        let mlp = self
            .mlp
            .forward(h, plan.matmul, plan.residual_projection, i, obs);
        let x = x + mlp.cast(plan.residual);
        observe(obs, Site::layer(i, Op::LayerOutput), x)
    }
}
