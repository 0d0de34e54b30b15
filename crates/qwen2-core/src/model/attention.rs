//! Grouped-query self-attention with q/k/v biases, RoPE and a causal mask.

use burn::prelude::{Backend, Tensor};
use burn::tensor::activation::softmax;
use burn::tensor::{FloatDType, TensorData};

use std::sync::Arc;

use super::fused::FusedKernels;
use super::linear::Linear;
use super::rope::Rope;
use crate::config::Qwen2Config;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::precision::PrecisionPlan;
use crate::weights::Checkpoint;

/// `model.layers.N.self_attn`.
pub struct Attention<B: Backend> {
    /// `[hidden, heads * head_dim]` + bias.
    pub q_proj: Linear<B>,
    /// `[hidden, kv_heads * head_dim]` + bias.
    pub k_proj: Linear<B>,
    /// `[hidden, kv_heads * head_dim]` + bias.
    pub v_proj: Linear<B>,
    /// `[heads * head_dim, hidden]`, no bias.
    pub o_proj: Linear<B>,
    /// Fused RoPE and attention, installed by the backend.
    pub kernels: Option<Arc<dyn FusedKernels<B>>>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl<B: Backend> Attention<B> {
    /// Loads `{prefix}.{q,k,v,o}_proj`.
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        c: &Qwen2Config,
        dtype: FloatDType,
        device: &B::Device,
    ) -> Result<Self> {
        let (h, q, kv) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let lin = |name: &str, i, o, bias| {
            Linear::load(ckpt, &format!("{prefix}.{name}"), i, o, bias, dtype, device)
        };
        Ok(Attention {
            q_proj: lin("q_proj", h, q, true)?,
            k_proj: lin("k_proj", h, kv, true)?,
            v_proj: lin("v_proj", h, kv, true)?,
            o_proj: lin("o_proj", q, h, false)?,
            kernels: None,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        })
    }

    /// `x`: `[seq, hidden]` (normed, matmul dtype) at positions `cache.len()..` →
    /// `[seq, hidden]` in matmul dtype. Appends this call's keys/values to `cache` for `layer`.
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        layer: usize,
        cache: &mut KvCache<B>,
        rope: &Rope<B>,
        plan: &PrecisionPlan,
    ) -> Tensor<B, 2> {
        let [seq, _] = x.dims();
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let rep = h / kvh;
        let start = cache.len();
        let split_heads = |t: Tensor<B, 2>, n: usize| t.reshape([seq, n, d]).swap_dims(0, 1);

        if let Some(k) = self
            .kernels
            .as_ref()
            .filter(|k| k.attention_supported(plan))
        {
            let q = self.q_proj.forward(x.clone(), plan.matmul);
            let q = k.rope(&q, h, &rope.cos, &rope.sin, start);
            let key = self.k_proj.forward(x.clone(), plan.matmul);
            let key = k.rope(&key, kvh, &rope.cos, &rope.sin, start);
            let v = self.v_proj.forward(x, plan.matmul);
            let (keys, values) = cache.append(layer, split_heads(key, kvh), split_heads(v, kvh));
            let out = k.attention(&q, &keys, &values, start, plan);
            return self.o_proj.forward(out, plan.residual_projection);
        }

        let q = split_heads(self.q_proj.forward(x.clone(), plan.matmul), h);
        let k = split_heads(self.k_proj.forward(x.clone(), plan.matmul), kvh);
        let v = split_heads(self.v_proj.forward(x, plan.matmul), kvh);
        let q = rope.apply(q, start);
        let k = rope.apply(k, start);
        let (keys, values) = cache.append(layer, k, v);
        let total = start + seq;

        // Group the `rep` query heads that share a kv head: [kvh, rep * seq, d].
        let q = q.cast(plan.attention_scores).reshape([kvh, rep * seq, d]);
        let scale = 1.0 / (d as f64).sqrt();
        let scores = q.matmul(keys.cast(plan.attention_scores).swap_dims(1, 2)) * scale;
        let scores = if seq > 1 {
            scores + causal_mask::<B>(rep, seq, start, plan.attention_scores, &values.device())
        } else {
            scores
        };
        let probs = softmax(scores.cast(plan.softmax), 2);
        let out = probs
            .cast(plan.matmul)
            .matmul(values.cast(plan.matmul))
            .reshape([h, seq, d])
            .swap_dims(0, 1)
            .reshape([seq, h * d]);
        debug_assert_eq!(total, cache.len() + seq);
        self.o_proj.forward(out, plan.residual_projection)
    }
}

/// Additive mask `[1, rep * seq, start + seq]`: row `r` is query `r % seq` at absolute position
/// `start + r % seq`, which sees keys `0..=start + r % seq`.
fn causal_mask<B: Backend>(
    rep: usize,
    seq: usize,
    start: usize,
    dtype: FloatDType,
    device: &B::Device,
) -> Tensor<B, 3> {
    let total = start + seq;
    let mut mask = vec![0f32; rep * seq * total];
    for r in 0..rep * seq {
        let visible = start + r % seq + 1;
        mask[r * total + visible..(r + 1) * total].fill(f32::NEG_INFINITY);
    }
    Tensor::from_data(
        TensorData::new(mask, [1, rep * seq, total]),
        (device, dtype.into()),
    )
}
