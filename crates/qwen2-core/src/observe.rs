//! Observation points inside the forward pass. The stability monitor and the per-layer
//! hidden-state checks hook in here; names follow HF module paths so users can match them
//! with PyTorch forward hooks.

use std::fmt;

use burn::prelude::{Backend, Tensor};

/// An op group whose output can be observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `model.embed_tokens` output.
    Embedding,
    /// `input_layernorm` output.
    InputNorm,
    /// `self_attn.o_proj` output (the attention block's contribution).
    AttentionOutput,
    /// Residual stream after adding the attention output.
    AttentionResidual,
    /// `post_attention_layernorm` output.
    PostAttentionNorm,
    /// `mlp.gate_proj` output.
    MlpGate,
    /// `mlp.up_proj` output.
    MlpUp,
    /// `mlp.down_proj` output.
    MlpDown,
    /// The decoder layer's output: the residual stream after adding the MLP output.
    LayerOutput,
    /// `model.norm` output.
    FinalNorm,
    /// `lm_head` output.
    Logits,
}

/// Where in the graph a tensor was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Site {
    /// Decoder layer index, `None` outside the layers.
    pub layer: Option<usize>,
    /// The op group.
    pub op: Op,
}

impl Site {
    /// A site outside the decoder layers.
    pub const fn global(op: Op) -> Self {
        Site { layer: None, op }
    }

    /// A site inside decoder layer `layer`.
    pub const fn layer(layer: usize, op: Op) -> Self {
        Site {
            layer: Some(layer),
            op,
        }
    }
}

impl fmt::Display for Site {
    /// The HF module path, e.g. `model.layers.0.mlp.down_proj`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffix = match self.op {
            Op::Embedding => return f.write_str("model.embed_tokens"),
            Op::FinalNorm => return f.write_str("model.norm"),
            Op::Logits => return f.write_str("lm_head"),
            Op::InputNorm => "input_layernorm",
            Op::AttentionOutput => "self_attn.o_proj",
            Op::AttentionResidual => "residual_add.self_attn",
            Op::PostAttentionNorm => "post_attention_layernorm",
            Op::MlpGate => "mlp.gate_proj",
            Op::MlpUp => "mlp.up_proj",
            Op::MlpDown => "mlp.down_proj",
            Op::LayerOutput => "",
        };
        let layer = self.layer.unwrap_or(0);
        if suffix.is_empty() {
            write!(f, "model.layers.{layer}")
        } else {
            write!(f, "model.layers.{layer}.{suffix}")
        }
    }
}

/// Receives tensors from inside the forward pass.
pub trait Observer<B: Backend> {
    /// Whether this observer wants the tensor at `site` (lets the graph skip cheap work, and
    /// lets an observer look only at, say, layer outputs).
    fn wants(&self, site: Site) -> bool;

    /// Called with the tensor (`[seq, width]`) produced at `site`.
    fn observe(&mut self, site: Site, tensor: &Tensor<B, 2>);

    /// The tensor the graph continues with after `site` (`[rows, width]`): the same tensor by
    /// default; a backward probe returns an identity op whose backward checks the gradient.
    fn transform(&mut self, _site: Site, tensor: Tensor<B, 2>) -> Tensor<B, 2> {
        tensor
    }
}

/// Observes nothing.
pub struct NoObserver;

impl<B: Backend> Observer<B> for NoObserver {
    fn wants(&self, _site: Site) -> bool {
        false
    }

    fn observe(&mut self, _site: Site, _tensor: &Tensor<B, 2>) {}
}

/// Collects the embedding output and every decoder layer's output as f32 host data,
/// `[seq, hidden]` each: the same tensors HF's `output_hidden_states` reports before the final norm.
#[derive(Default)]
pub struct HiddenStates {
    /// `states[0]` is the embedding output, `states[i + 1]` layer `i`'s output; row-major `[seq, hidden]`.
    pub states: Vec<Vec<f32>>,
}

impl<B: Backend> Observer<B> for HiddenStates {
    fn wants(&self, site: Site) -> bool {
        matches!(site.op, Op::Embedding | Op::LayerOutput)
    }

    fn observe(&mut self, _site: Site, tensor: &Tensor<B, 2>) {
        let data = tensor
            .clone()
            .cast(burn::tensor::FloatDType::F32)
            .into_data();
        self.states
            .push(data.to_vec::<f32>().expect("cast to f32 above"));
    }
}
