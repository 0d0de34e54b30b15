//! Grouped-query self-attention with q/k/v biases, RoPE, a causal mask and per-row key lengths.

use burn::prelude::{Backend, Tensor};
use burn::tensor::activation::softmax;
use burn::tensor::{FloatDType, TensorData};

use std::sync::Arc;

use super::batch::Batch;
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
    /// `q_proj`: weight `[heads * head_dim, hidden]` + bias.
    pub q_proj: Linear<B>,
    /// `k_proj`: weight `[kv_heads * head_dim, hidden]` + bias.
    pub k_proj: Linear<B>,
    /// `v_proj`: weight `[kv_heads * head_dim, hidden]` + bias.
    pub v_proj: Linear<B>,
    /// `o_proj`: weight `[hidden, heads * head_dim]`, no bias.
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

    /// `x`: `[batch * seq, hidden]` (normed, matmul dtype) for the rows of `rows`, at positions
    /// `start..start + seq` → `[batch * seq, hidden]` in the residual-projection dtype. With a
    /// `cache` (one row only) this call's keys/values are appended to it for `layer` and the
    /// queries attend to everything cached; without one they attend to this call's keys.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        rows: &Batch,
        start: usize,
        layer: usize,
        cache: Option<&mut KvCache<B>>,
        rope: &Rope<B>,
        plan: &PrecisionPlan,
    ) -> Tensor<B, 2> {
        let (b, seq) = (rows.batch(), rows.seq());
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let rep = h / kvh;

        let fused = self
            .kernels
            .as_ref()
            .filter(|k| b == 1 && !rows.is_padded() && k.attention_supported(plan));
        match (fused, cache) {
            (Some(k), Some(cache)) => {
                let split = |t: Tensor<B, 2>| t.reshape([seq, kvh, d]).swap_dims(0, 1);
                let q = self.q_proj.forward(x.clone(), plan.matmul);
                let q = k.rope(&q, h, &rope.cos, &rope.sin, start);
                let key = self.k_proj.forward(x.clone(), plan.matmul);
                let key = k.rope(&key, kvh, &rope.cos, &rope.sin, start);
                let v = self.v_proj.forward(x, plan.matmul);
                let (keys, values) = cache.append(layer, split(key), split(v));
                let out = k.attention(&q, &keys, &values, start, plan);
                self.o_proj.forward(out, plan.residual_projection)
            }
            (_, cache) => {
                let split = |t: Tensor<B, 2>, n: usize| t.reshape([b, seq, n, d]).swap_dims(1, 2);
                let q = split(self.q_proj.forward(x.clone(), plan.matmul), h);
                let k = split(self.k_proj.forward(x.clone(), plan.matmul), kvh);
                let v = split(self.v_proj.forward(x, plan.matmul), kvh);
                let q = rope.apply(q, start);
                let k = rope.apply(k, start);
                let (keys, values) = match cache {
                    Some(cache) => {
                        let (keys, values) =
                            cache.append(layer, k.squeeze_dim(0), v.squeeze_dim(0));
                        (keys.unsqueeze_dim(0), values.unsqueeze_dim(0))
                    }
                    None => (k, v),
                };
                let total = keys.dims()[2];

                // Group the `rep` query heads that share a kv head: [b, kvh, rep * seq, d].
                let q = q
                    .cast(plan.attention_scores)
                    .reshape([b, kvh, rep * seq, d]);
                let scale = 1.0 / (d as f64).sqrt();
                let scores = q.matmul(keys.cast(plan.attention_scores).swap_dims(2, 3)) * scale;
                let scores = if seq > 1 || rows.is_padded() {
                    let mask = attention_mask::<B>(
                        rows,
                        rep,
                        start,
                        total,
                        plan.attention_scores,
                        &values.device(),
                    );
                    scores + mask
                } else {
                    scores
                };
                let probs = softmax(scores.cast(plan.softmax), 3);
                let out = probs
                    .cast(plan.matmul)
                    .matmul(values.cast(plan.matmul))
                    .reshape([b, h, seq, d])
                    .swap_dims(1, 2)
                    .reshape([b * seq, h * d]);
                self.o_proj.forward(out, plan.residual_projection)
            }
        }
    }
}

/// Additive mask `[batch, 1, rep * seq, total]`: in row `r`, query row `q` is the query at
/// absolute position `start + q % seq`; it sees key `j` when `j <= start + q % seq` (causal)
/// and `j < start + lengths[r]` (the row's padding is hidden). Padded queries still see the
/// row's real keys, so no row of the softmax is empty.
fn attention_mask<B: Backend>(
    rows: &Batch,
    rep: usize,
    start: usize,
    total: usize,
    dtype: FloatDType,
    device: &B::Device,
) -> Tensor<B, 4> {
    let (b, seq) = (rows.batch(), rows.seq());
    let mut mask = vec![0f32; b * rep * seq * total];
    for (r, &len) in rows.lengths().iter().enumerate() {
        for qr in 0..rep * seq {
            let visible = (start + qr % seq + 1).min(start + len).min(total);
            let row = (r * rep * seq + qr) * total;
            mask[row + visible..row + total].fill(f32::NEG_INFINITY);
        }
    }
    Tensor::from_data(
        TensorData::new(mask, [b, 1, rep * seq, total]),
        (device, dtype.into()),
    )
}
