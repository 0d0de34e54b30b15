//! The Qwen2 graph, written once over any burn backend. Each role's dtype comes from a
//! [`PrecisionPlan`]; every boundary between roles is an explicit cast.

mod attention;
mod batch;
mod fused;
mod layer;
mod linear;
mod load;
mod lora;
mod mlp;
mod norm;
mod params;
mod quantized;
mod rope;

use burn::prelude::{Backend, Int, Tensor};
use burn::tensor::TensorData;

pub use attention::Attention;
pub use batch::Batch;
pub use fused::FusedKernels;
pub use layer::DecoderLayer;
pub use linear::{Linear, MatmulKernel};
pub use lora::{LoraAdapter, LoraDropout};
pub use mlp::Mlp;
pub use norm::RmsNorm;
pub use params::{WeightKind, WeightMut};
pub use quantized::{
    host_quantized_product, quantized_rows, storage_summary, ProjectionWeight, QuantTarget,
    WeightQuantization,
};
pub use rope::{inverse_frequencies, Rope};

use crate::config::Qwen2Config;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::observe::{NoObserver, Observer, Op, Site};
use crate::precision::PrecisionPlan;
use crate::weights::Checkpoint;
use mlp::observe;

/// Which positions get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Only the last position of the call (generation).
    Last,
    /// Every position of the call (scoring, conformance tests).
    All,
}

/// A loaded Qwen2 / Qwen2.5 causal language model.
pub struct Qwen2Model<B: Backend> {
    /// `model.embed_tokens.weight`, `[vocab, hidden]`: dense in the plan's weight dtype, or a
    /// GGUF model's quantized blocks kept as stored (rows dequantized at lookup).
    pub embed_tokens: ProjectionWeight<B>,
    /// The decoder layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// `model.norm`, `[hidden]`.
    pub norm: RmsNorm<B>,
    /// `lm_head`, weight `[vocab, hidden]`; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear<B>>,
    /// The backend's product for the tied head (which has no `Linear` of its own).
    tied_head_kernel: Option<std::sync::Arc<dyn MatmulKernel<B>>>,
    /// The tied head quantized at load (`--quantize`: `[vocab, hidden]` blocks of the embedding
    /// matrix) while the embedding lookup reads the dense `embed_tokens`.
    tied_head_quantized: Option<std::sync::Arc<qwen2_quant::QuantMatrix>>,
    /// A context shorter than the model's (`--ctx-size`), if one was set.
    context_limit: Option<usize>,
    /// RoPE tables for every position of the context.
    pub rope: Rope<B>,
    config: Qwen2Config,
    plan: PrecisionPlan,
    device: B::Device,
}

impl<B: Backend> Qwen2Model<B> {
    /// Routes every projection (q/k/v/o, gate/up/down, lm_head) through `kernel` where it
    /// handles the shape; the backend crates install theirs at load.
    pub fn set_matmul_kernel(&mut self, kernel: std::sync::Arc<dyn MatmulKernel<B>>) {
        for layer in &mut self.layers {
            let a = &mut layer.self_attn;
            let m = &mut layer.mlp;
            for linear in [
                &mut a.q_proj,
                &mut a.k_proj,
                &mut a.v_proj,
                &mut a.o_proj,
                &mut m.gate_proj,
                &mut m.up_proj,
                &mut m.down_proj,
            ] {
                linear.kernel = Some(kernel.clone());
            }
        }
        match &mut self.lm_head {
            Some(head) => head.kernel = Some(kernel),
            None => self.tied_head_kernel = Some(kernel),
        }
    }

    /// Runs RMSNorm, SwiGLU, RoPE and attention through `kernels` where they support the plan; the
    /// backend crates install theirs at load.
    pub fn set_fused_kernels(&mut self, kernels: std::sync::Arc<dyn FusedKernels<B>>) {
        for layer in &mut self.layers {
            layer.self_attn.kernels = Some(kernels.clone());
            layer.mlp.kernels = Some(kernels.clone());
            layer.input_layernorm.kernels = Some(kernels.clone());
            layer.post_attention_layernorm.kernels = Some(kernels.clone());
        }
        self.norm.kernels = Some(kernels);
    }

    /// The validated config.
    pub fn config(&self) -> &Qwen2Config {
        &self.config
    }

    /// The precision plan the model runs.
    pub fn plan(&self) -> &PrecisionPlan {
        &self.plan
    }

    /// Switches the dtypes the graph computes in (every role but `weights`, which stays the
    /// dtype the weights are stored in): a training run falling back to a safer policy.
    pub fn set_compute_plan(&mut self, plan: PrecisionPlan) {
        self.plan = PrecisionPlan {
            weights: self.plan.weights,
            ..plan
        };
    }

    /// The device the weights live on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Longest sequence (prompt + generated) the model can process: the model's context, or
    /// the shorter limit of [`Qwen2Model::limit_context`].
    pub fn context_length(&self) -> usize {
        let full = self.rope.max_positions();
        self.context_limit.map_or(full, |n| n.min(full))
    }

    /// Caps sequences (and so the KV cache) at `positions`, which must be between 1 and the
    /// model's context length.
    pub fn limit_context(&mut self, positions: usize) -> Result<()> {
        let full = self.rope.max_positions();
        if positions == 0 || positions > full {
            return Err(Error::Invalid(format!(
                "context size {positions} must be between 1 and the model's context length {full}"
            )));
        }
        self.context_limit = Some(positions);
        Ok(())
    }

    /// A KV cache for up to `capacity` positions (capped at the context length).
    pub fn new_cache(&self, capacity: usize) -> KvCache<B> {
        let c = &self.config;
        KvCache::new(
            c.num_hidden_layers,
            c.num_key_value_heads,
            c.head_dim,
            capacity.min(self.context_length()),
            self.plan.kv_cache,
            &self.device,
        )
    }

    /// Runs `ids` at positions `cache.len()..` and returns logits in the plan's logits dtype:
    /// `[1, vocab]` for [`LogitsFor::Last`], `[ids.len(), vocab]` for [`LogitsFor::All`].
    pub fn forward(
        &self,
        ids: &[u32],
        cache: &mut KvCache<B>,
        which: LogitsFor,
    ) -> Result<Tensor<B, 2>> {
        self.forward_observed(ids, cache, which, &mut NoObserver)
    }

    /// [`Qwen2Model::forward`] that also hands intermediate tensors to `obs`.
    pub fn forward_observed(
        &self,
        ids: &[u32],
        cache: &mut KvCache<B>,
        which: LogitsFor,
        obs: &mut dyn Observer<B>,
    ) -> Result<Tensor<B, 2>> {
        self.check_input(ids, cache.len())?;
        cache.check_room(ids.len())?;
        let rows = Batch::single(ids);
        let start = cache.len();
        let x = self.layers_forward(&rows, start, Some(cache), obs);
        cache.advance(ids.len());
        let seq = ids.len();
        let x = if which == LogitsFor::Last && seq > 1 {
            x.slice([seq - 1..seq, 0..self.config.hidden_size])
        } else {
            x
        };
        Ok(self.head(x, obs))
    }

    /// One decode step of `ids.len()` sequences at once: sequence `r` feeds `ids[r]` at position
    /// `caches[r].len()` and its cache grows by one → logits `[ids.len(), vocab]` in the plan's
    /// logits dtype. Every matmul runs once over all rows; each row attends to its own cache,
    /// so rows never mix (a non-finite value in one row stays in that row).
    pub fn forward_decode(
        &self,
        ids: &[u32],
        caches: &mut [&mut KvCache<B>],
        obs: &mut dyn Observer<B>,
    ) -> Result<Tensor<B, 2>> {
        if ids.len() != caches.len() {
            return Err(Error::Invalid(format!(
                "{} decode ids for {} caches",
                ids.len(),
                caches.len()
            )));
        }
        for (id, cache) in ids.iter().zip(caches.iter_mut()) {
            self.check_input(std::slice::from_ref(id), cache.len())?;
            cache.reserve(cache.len() + 1, self.context_length());
            cache.check_room(1)?;
        }
        let mut x = self.embed(ids, obs);
        for layer in &self.layers {
            x = layer.forward_decode(x, caches, &self.rope, &self.plan, obs);
        }
        for cache in caches.iter_mut() {
            cache.advance(1);
        }
        Ok(self.head(x, obs))
    }

    /// Runs every row of `rows` from position 0 without a KV cache (training, scoring) and
    /// returns the residual stream after the last layer, `[batch * seq, hidden]` in the
    /// residual dtype (before the final norm). Padded positions hold meaningless values.
    pub fn forward_hidden(&self, rows: &Batch, obs: &mut dyn Observer<B>) -> Result<Tensor<B, 2>> {
        for r in 0..rows.batch() {
            self.check_input(rows.row(r), 0)?;
        }
        Ok(self.layers_forward(rows, 0, None, obs))
    }

    /// Logits of every position of every row, `[batch * seq, vocab]` in the logits dtype.
    pub fn forward_batch(&self, rows: &Batch, obs: &mut dyn Observer<B>) -> Result<Tensor<B, 2>> {
        let x = self.forward_hidden(rows, obs)?;
        Ok(self.head(x, obs))
    }

    /// Final norm and `lm_head`: `x` `[n, hidden]` (residual stream) → logits `[n, vocab]` in
    /// the plan's logits dtype.
    pub fn head(&self, x: Tensor<B, 2>, obs: &mut dyn Observer<B>) -> Tensor<B, 2> {
        let plan = &self.plan;
        let h = self.norm.forward(x, plan.norm, plan.matmul);
        let h = observe(obs, Site::global(Op::FinalNorm), h);
        let logits = match &self.lm_head {
            Some(head) => head.forward(h, plan.matmul),
            None => {
                let h = h.cast(plan.matmul);
                let kernel = self.tied_head_kernel.as_ref();
                match &self.tied_head_quantized {
                    Some(q) => {
                        let head = ProjectionWeight::Quantized(q.clone());
                        linear::project_weight(&h, &head, None, kernel, plan.matmul)
                    }
                    None => {
                        linear::project_weight(&h, &self.embed_tokens, None, kernel, plan.matmul)
                    }
                }
            }
        }
        .cast(plan.logits);
        observe(obs, Site::global(Op::Logits), logits)
    }

    /// Embedding and every decoder layer: `[batch * seq, hidden]` in the residual dtype.
    fn layers_forward(
        &self,
        rows: &Batch,
        start: usize,
        mut cache: Option<&mut KvCache<B>>,
        obs: &mut dyn Observer<B>,
    ) -> Tensor<B, 2> {
        let mut x = self.embed(rows.ids(), obs);
        for layer in &self.layers {
            x = layer.forward(
                x,
                rows,
                start,
                cache.as_deref_mut(),
                &self.rope,
                &self.plan,
                obs,
            );
        }
        x
    }

    /// Embedding rows of `ids` → `[ids.len(), hidden]` in the residual dtype.
    fn embed(&self, ids: &[u32], obs: &mut dyn Observer<B>) -> Tensor<B, 2> {
        let idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                [ids.len()],
            ),
            &self.device,
        );
        let x = match &self.embed_tokens {
            ProjectionWeight::Dense(t) => t.clone().select(0, idx),
            ProjectionWeight::Quantized(q) => Tensor::from_data(
                TensorData::new(quantized::dequantize_rows(q, ids), [ids.len(), q.cols()]),
                (&self.device, burn::tensor::FloatDType::F32.into()),
            ),
        }
        .cast(self.plan.residual);
        observe(obs, Site::global(Op::Embedding), x)
    }

    fn check_input(&self, ids: &[u32], start: usize) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::EmptyInput);
        }
        let vocab = self.config.vocab_size;
        if let Some((position, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab)
        {
            return Err(Error::TokenOutOfRange {
                id,
                position,
                vocab_size: vocab,
            });
        }
        let needed = start + ids.len();
        if needed > self.context_length() {
            return Err(Error::ContextOverflow {
                requested: needed,
                capacity: self.context_length(),
                limit: "the model's context length (max_position_embeddings)".into(),
            });
        }
        Ok(())
    }
}

/// Positions the model supports: `max_position_embeddings`, or YaRN's extended length if larger.
pub fn context_length(c: &Qwen2Config) -> usize {
    match &c.rope_scaling {
        crate::config::RopeScaling::Yarn(y) => c
            .max_position_embeddings
            .max((y.original_max_position_embeddings as f64 * y.factor) as usize),
        crate::config::RopeScaling::Default => c.max_position_embeddings,
    }
}
