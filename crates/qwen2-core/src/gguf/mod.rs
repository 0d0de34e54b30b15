//! GGUF models (llama.cpp's format, read by `qwen2-gguf`) as Qwen2 checkpoints:
//!
//! - tensor names: llama.cpp's (`blk.N.attn_q.weight`) ↔ Hugging Face's
//!   (`model.layers.N.self_attn.q_proj.weight`), [`hf_name`] / [`gguf_name`];
//! - [`GgufTensors`]: the tensors of a GGUF model under their HF names, each dequantized to f32
//!   when loaded and converted to the plan's dtype (behind [`crate::weights::Checkpoint`]);
//! - `config`: [`crate::Qwen2Config::from_gguf`] from the `qwen2.*` metadata;
//! - `tokenizer`: the HF `tokenizer.json` equivalent of the `tokenizer.ggml.*` metadata, the
//!   chat template of `tokenizer.chat_template`;
//! - [`export_gguf`]: a Hugging Face directory written as a quantized GGUF model.
//!
//! Shapes: GGUF lists dimensions innermost first (`ne0`), so a linear weight stored with
//! `dims = [in, out]` is the row-major HF `[out, in]` matrix, byte for byte; no transpose and,
//! for `qwen2` (unlike llama), no q/k permutation: llama.cpp's converter writes Qwen2's weights
//! as HF has them and runs them with the half-split (NEOX) RoPE HF uses.

mod checkpoint;
mod config;
mod export;
mod export_meta;
pub(crate) mod tokenizer;

pub use checkpoint::GgufTensors;
pub use export::{
    export_gguf, tensor_type, use_more_bits, ExportReport, QuantScheme, TensorReport,
};

/// Names outside the layers: (GGUF, HF).
const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Module names inside layer N: (GGUF `blk.N.<name>`, HF `model.layers.N.<name>`).
const LAYER_NAMES: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// The HF name of GGUF tensor `name` (`blk.3.ffn_down.weight` →
/// `model.layers.3.mlp.down_proj.weight`), or `None` for a tensor the Qwen2 graph does not use
/// (e.g. llama.cpp's `rope_freqs.weight`).
pub fn hf_name(name: &str) -> Option<String> {
    if let Some(&(_, hf)) = GLOBAL_NAMES.iter().find(|(g, _)| *g == name) {
        return Some(hf.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (block, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    if block.is_empty() || !block.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let &(_, hf) = LAYER_NAMES.iter().find(|(g, _)| *g == module)?;
    Some(format!("model.layers.{block}.{hf}.{kind}"))
}

/// The GGUF name of HF tensor `name`, the inverse of [`hf_name`].
pub fn gguf_name(name: &str) -> Option<String> {
    if let Some(&(g, _)) = GLOBAL_NAMES.iter().find(|(_, h)| *h == name) {
        return Some(g.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (block, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let &(g, _) = LAYER_NAMES.iter().find(|(_, h)| *h == module)?;
    Some(format!("blk.{block}.{g}.{kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        let pairs = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output.weight", "lm_head.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("blk.0.attn_q.bias", "model.layers.0.self_attn.q_proj.bias"),
            (
                "blk.27.attn_output.weight",
                "model.layers.27.self_attn.o_proj.weight",
            ),
            (
                "blk.3.ffn_down.weight",
                "model.layers.3.mlp.down_proj.weight",
            ),
            (
                "blk.1.ffn_norm.weight",
                "model.layers.1.post_attention_layernorm.weight",
            ),
            (
                "blk.1.attn_norm.weight",
                "model.layers.1.input_layernorm.weight",
            ),
        ];
        for (g, h) in pairs {
            assert_eq!(hf_name(g).as_deref(), Some(h), "{g}");
            assert_eq!(gguf_name(h).as_deref(), Some(g), "{h}");
        }
        for unused in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.0.attn_q.scale",
        ] {
            assert_eq!(hf_name(unused), None, "{unused}");
        }
    }
}
