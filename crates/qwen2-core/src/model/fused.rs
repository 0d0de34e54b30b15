//! Fused versions of the small ops around the projections (RMSNorm, SwiGLU, RoPE, causal
//! attention).
//! The generic graph builds them from many burn ops; a backend whose per-op overhead dominates
//! at these sizes (burn-flex walks strided views element by element) can compute each in one
//! pass. A kernel must compute what the graph computes: the same roles in the same dtypes,
//! rounded at the same points.

use burn::prelude::{Backend, Tensor};
use burn::tensor::FloatDType;

use crate::precision::PrecisionPlan;

/// A backend's fused RMSNorm, SwiGLU, RoPE and attention.
pub trait FusedKernels<B: Backend>: Send + Sync {
    /// Whether [`FusedKernels::swiglu`] handles tensors of `dtype`.
    fn swiglu_supported(&self, dtype: FloatDType) -> bool;

    /// `silu(gate) * up`: `gate`, `up` `[seq, intermediate]` in one dtype → the same shape and
    /// dtype; `silu(gate)` rounded to that dtype before the product, as the graph does.
    fn swiglu(&self, gate: &Tensor<B, 2>, up: &Tensor<B, 2>) -> Tensor<B, 2>;

    /// RMSNorm as [`super::RmsNorm::forward`] computes it: `x` `[rows, hidden]` (any float
    /// dtype) widened to `norm`, `x / sqrt(mean(x²) + eps)` in `norm`, rounded to `out`, times
    /// `weight` `[hidden]` (rounded to `out`) and rounded again → `[rows, hidden]` in `out`;
    /// `None` to leave it to the graph. The mean of squares may sum in another order than
    /// burn's (a few `norm` roundings).
    fn rms_norm(
        &self,
        _x: &Tensor<B, 2>,
        _weight: &Tensor<B, 1>,
        _eps: f64,
        _norm: FloatDType,
        _out: FloatDType,
    ) -> Option<Tensor<B, 2>> {
        None
    }

    /// Writes `rows` `[heads, seq, head_dim]` (in `cache`'s dtype) into positions
    /// `start..start + seq` of `cache` `[heads, capacity, head_dim]` in place and returns
    /// `true`; `false`, with `cache` unchanged, to leave it to `slice_assign`.
    fn cache_write(&self, _cache: &mut Tensor<B, 3>, _start: usize, _rows: &Tensor<B, 3>) -> bool {
        false
    }

    /// Self-attention of rows without a cache (training, scoring), RoPE included: `q`
    /// `[batch * seq, heads * head_dim]`, `k`/`v` `[batch * seq, kv_heads * head_dim]` as the
    /// projections gave them (not rotated; one dtype each), the queries at positions
    /// `start..start + seq`, row `r` holding `rows.lengths()[r]` real tokens (its padding
    /// hidden from every query) → `[batch * seq, heads * head_dim]` in `plan.matmul`: RoPE in
    /// f32 from the `cos`/`sin` tables `[max_positions, head_dim / 2]`, the scores in
    /// `plan.attention_scores` scaled by `1/sqrt(head_dim)`, causal, softmax in `plan.softmax`,
    /// probabilities and values in `plan.matmul`. `None` to leave it to the graph.
    #[allow(clippy::too_many_arguments)]
    fn attention_rows(
        &self,
        _q: &Tensor<B, 2>,
        _k: &Tensor<B, 2>,
        _v: &Tensor<B, 2>,
        _rows: &super::Batch,
        _heads: usize,
        _start: usize,
        _cos: &Tensor<B, 2>,
        _sin: &Tensor<B, 2>,
        _plan: &PrecisionPlan,
    ) -> Option<Tensor<B, 2>> {
        None
    }

    /// The summed causal-LM loss `−Σ_r log_softmax(logits[r])[targets[r]]`: `logits` `[n,
    /// vocab]` f32, one target id per row → `[1]` f32; `None` to leave it to the graph.
    fn cross_entropy_sum(&self, _logits: &Tensor<B, 2>, _targets: &[u32]) -> Option<Tensor<B, 1>> {
        None
    }

    /// Whether [`FusedKernels::rope`] and [`FusedKernels::attention`] handle `plan`.
    fn attention_supported(&self, plan: &PrecisionPlan) -> bool;

    /// Rotates rows of heads: `x` `[seq, heads * head_dim]` (any float dtype) at positions
    /// `start..start + seq`, with `cos`/`sin` tables `[max_positions, head_dim / 2]` f32 →
    /// `[seq, heads * head_dim]` f32 (Qwen2's half-split `rotate_half` layout).
    fn rope(
        &self,
        x: &Tensor<B, 2>,
        heads: usize,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
        start: usize,
    ) -> Tensor<B, 2>;

    /// Causal grouped-query attention for queries at positions `start..start + seq`:
    /// `q` `[seq, heads * head_dim]` f32 (rotated), `keys`/`values` `[kv_heads, start + seq,
    /// head_dim]` (the cache, in its dtype) → `[seq, heads * head_dim]` in `plan.matmul`.
    /// Scores in `plan.attention_scores` (scaled by `1/sqrt(head_dim)`), softmax in
    /// `plan.softmax`, probabilities and values in `plan.matmul`.
    fn attention(
        &self,
        q: &Tensor<B, 2>,
        keys: &Tensor<B, 3>,
        values: &Tensor<B, 3>,
        start: usize,
        plan: &PrecisionPlan,
    ) -> Tensor<B, 2>;
}
