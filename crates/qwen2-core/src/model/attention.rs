//! Grouped-query self-attention with q/k/v biases, RoPE, a causal mask and per-row key lengths.

use burn::prelude::{Backend, Tensor};
use burn::tensor::activation::softmax;
use burn::tensor::{FloatDType, TensorData};

use std::sync::Arc;

use super::batch::Batch;
use super::fused::FusedKernels;
use super::linear::Linear;
use super::quantized::WeightQuantization;
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
        quant: WeightQuantization,
        device: &B::Device,
    ) -> Result<Self> {
        let (h, q, kv) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let lin = |name: &str, i, o, bias| {
            let name = format!("{prefix}.{name}");
            Linear::load(ckpt, &name, i, o, bias, dtype, quant, device)
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
        let q = self.q_proj.forward(x.clone(), plan.matmul);
        let k = self.k_proj.forward(x.clone(), plan.matmul);
        let v = self.v_proj.forward(x, plan.matmul);
        let out = match cache {
            Some(cache) if rows.batch() == 1 && !rows.is_padded() => {
                self.attend_cached(q, k, v, start, layer, cache, rope, plan)
            }
            _ => self.attend_rows(q, k, v, rows, start, rope, plan),
        };
        self.o_proj.forward(out, plan.residual_projection)
    }

    /// One decode step for `caches.len()` sequences at once: `x` `[n, hidden]` holds one new
    /// position per sequence (row `r` at position `caches[r].len()`) → `[n, hidden]` in the
    /// residual-projection dtype. The projections run once over all rows (the weights are read
    /// once); each row attends to its own cache, to which its keys/values are appended.
    pub fn forward_decode(
        &self,
        x: Tensor<B, 2>,
        layer: usize,
        caches: &mut [&mut KvCache<B>],
        rope: &Rope<B>,
        plan: &PrecisionPlan,
    ) -> Tensor<B, 2> {
        let q = self.q_proj.forward(x.clone(), plan.matmul);
        let k = self.k_proj.forward(x.clone(), plan.matmul);
        let v = self.v_proj.forward(x, plan.matmul);
        let row = |t: &Tensor<B, 2>, r: usize| {
            let w = t.dims()[1];
            t.clone().slice([r..r + 1, 0..w])
        };
        let outs: Vec<Tensor<B, 2>> = caches
            .iter_mut()
            .enumerate()
            .map(|(r, cache)| {
                let start = cache.len();
                self.attend_cached(
                    row(&q, r),
                    row(&k, r),
                    row(&v, r),
                    start,
                    layer,
                    cache,
                    rope,
                    plan,
                )
            })
            .collect();
        self.o_proj
            .forward(Tensor::cat(outs, 0), plan.residual_projection)
    }

    /// One sequence against its cache: `q` `[seq, heads * head_dim]`, `k`/`v` `[seq, kv_heads *
    /// head_dim]` (projected, not yet rotated) at positions `start..start + seq`; appends the
    /// rotated keys and the values to `cache` for `layer` → `[seq, heads * head_dim]` in the
    /// matmul dtype, ready for `o_proj`.
    #[allow(clippy::too_many_arguments)]
    fn attend_cached(
        &self,
        q: Tensor<B, 2>,
        k: Tensor<B, 2>,
        v: Tensor<B, 2>,
        start: usize,
        layer: usize,
        cache: &mut KvCache<B>,
        rope: &Rope<B>,
        plan: &PrecisionPlan,
    ) -> Tensor<B, 2> {
        let seq = q.dims()[0];
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        if let Some(kern) = self
            .kernels
            .as_ref()
            .filter(|kern| kern.attention_supported(plan))
        {
            let split = |t: Tensor<B, 2>| t.reshape([seq, kvh, d]).swap_dims(0, 1);
            let q = kern.rope(&q, h, &rope.cos, &rope.sin, start);
            let k = kern.rope(&k, kvh, &rope.cos, &rope.sin, start);
            let (keys, values) = cache.append(layer, split(k), split(v), Some(kern.as_ref()));
            return kern.attention(&q, &keys, &values, start, plan);
        }
        let split = |t: Tensor<B, 2>, n: usize| t.reshape([1, seq, n, d]).swap_dims(1, 2);
        let q = rope.apply(split(q, h), start);
        let k = rope.apply(split(k, kvh), start);
        let (keys, values) = cache.append(
            layer,
            k.squeeze_dim(0),
            split(v, kvh).squeeze_dim(0),
            self.kernels.as_deref(),
        );
        let rows = Batch::uniform(1, seq);
        self.attention(
            q,
            keys.unsqueeze_dim(0),
            values.unsqueeze_dim(0),
            &rows,
            start,
            plan,
        )
    }

    /// Rows without a cache (training, scoring): each row attends to its own keys, hiding
    /// padding → `[batch * seq, heads * head_dim]` in the matmul dtype.
    #[allow(clippy::too_many_arguments)]
    fn attend_rows(
        &self,
        q: Tensor<B, 2>,
        k: Tensor<B, 2>,
        v: Tensor<B, 2>,
        rows: &Batch,
        start: usize,
        rope: &Rope<B>,
        plan: &PrecisionPlan,
    ) -> Tensor<B, 2> {
        let fused = self.kernels.as_ref().and_then(|kern| {
            kern.attention_rows(
                &q, &k, &v, rows, self.heads, start, &rope.cos, &rope.sin, plan,
            )
        });
        if let Some(out) = fused {
            return out;
        }
        let (b, seq) = (rows.batch(), rows.seq());
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let split = |t: Tensor<B, 2>, n: usize| t.reshape([b, seq, n, d]).swap_dims(1, 2);
        let q = rope.apply(split(q, h), start);
        let k = rope.apply(split(k, kvh), start);
        self.attention(q, k, split(v, kvh), rows, start, plan)
    }

    /// Scaled dot-product attention: `q` `[b, heads, seq, d]` (rotated), `keys`/`values`
    /// `[b, kv_heads, total, d]` → `[b * seq, heads * d]` in the matmul dtype, causal from
    /// `start` and hiding each row's padding.
    fn attention(
        &self,
        q: Tensor<B, 4>,
        keys: Tensor<B, 4>,
        values: Tensor<B, 4>,
        rows: &Batch,
        start: usize,
        plan: &PrecisionPlan,
    ) -> Tensor<B, 2> {
        let (b, seq) = (rows.batch(), rows.seq());
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let rep = h / kvh;
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
        probs
            .cast(plan.matmul)
            .matmul(values.cast(plan.matmul))
            .reshape([b, h, seq, d])
            .swap_dims(1, 2)
            .reshape([b * seq, h * d])
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
