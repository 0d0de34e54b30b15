//! [`Qwen2Config::from_gguf`]: the `qwen2.*` and `tokenizer.ggml.*` metadata of a GGUF model
//! written as the HF `config.json` it came from, then validated by the same code.

use qwen2_gguf::{GgmlType, GgufModel, Metadata};
use serde_json::{json, Value};

use crate::config::Qwen2Config;
use crate::error::{Error, Result};

/// The architecture whose GGUF files this engine runs.
pub const GGUF_ARCHITECTURE: &str = "qwen2";

/// HF config fields and the GGUF keys they come from (to name the key in errors).
const FIELD_KEYS: &[(&str, &str)] = &[
    ("vocab_size", "tokenizer.ggml.tokens (or token_embd.weight)"),
    ("hidden_size", "qwen2.embedding_length"),
    ("intermediate_size", "qwen2.feed_forward_length"),
    ("num_hidden_layers", "qwen2.block_count"),
    ("num_attention_heads", "qwen2.attention.head_count"),
    ("num_key_value_heads", "qwen2.attention.head_count_kv"),
    ("head_dim", "qwen2.attention.key_length"),
    ("rope_theta", "qwen2.rope.freq_base"),
    ("rms_norm_eps", "qwen2.attention.layer_norm_rms_epsilon"),
    ("max_position_embeddings", "qwen2.context_length"),
    ("rope_scaling", "qwen2.rope.scaling.*"),
];

impl Qwen2Config {
    /// The configuration of a GGUF model: `general.architecture` must be `qwen2`;
    /// `qwen2.block_count`, `.embedding_length`, `.feed_forward_length`,
    /// `.attention.head_count[_kv]`, `.rope.freq_base`, `.attention.layer_norm_rms_epsilon`,
    /// `.context_length` and `.rope.scaling.{type,factor,original_context_length}` (yarn) give
    /// the HF fields; the vocabulary size is `token_embd.weight`'s row count (else the token
    /// list's length); the embeddings are tied when there is no `output.weight`; bos/eos from
    /// `tokenizer.ggml.{bos,eos,eot}_token_id`. Errors name the file and the GGUF key.
    pub fn from_gguf(model: &GgufModel) -> Result<Self> {
        let meta = model.metadata();
        let path = model.path();
        let arch = meta.get_str("general.architecture")?;
        if arch != GGUF_ARCHITECTURE {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                what: format!(
                    "architecture \"{arch}\" (general.architecture): this engine runs \
                     \"{GGUF_ARCHITECTURE}\" GGUF models (Qwen2, Qwen2.5)"
                ),
            });
        }
        let key = |k: &str| format!("{GGUF_ARCHITECTURE}.{k}");
        let usize_of = |k: &str| meta.get_usize(&key(k));
        let opt_usize = |k: &str| meta.optional(&key(k), Metadata::get_usize);
        let float_of = |k: &str| meta.get_f64(&key(k)).map(decimal);

        let tokens = meta.optional("tokenizer.ggml.tokens", Metadata::get_string_array)?;
        let vocab_size = match (model.tensor_info("token_embd.weight"), tokens) {
            (Some(info), tokens) => {
                let rows = info.shape()[0];
                if let Some(t) = tokens.filter(|t| t.len() != rows) {
                    tracing::warn!(tokens = t.len(), rows, file = %path.display(),
                        "the token list and token_embd.weight disagree on the vocabulary size");
                }
                rows
            }
            (None, Some(t)) => t.len(),
            (None, None) => 0,
        };
        let heads = usize_of("attention.head_count")?;
        let head_dim = opt_usize("attention.key_length")?;
        if let Some(v) = opt_usize("attention.value_length")? {
            if Some(v) != head_dim {
                return Err(Error::Unsupported {
                    path: path.to_path_buf(),
                    what: format!(
                        "{} = {v} differs from the key length {head_dim:?}",
                        key("attention.value_length")
                    ),
                });
            }
        }
        let hidden = usize_of("embedding_length")?;
        if let Some(rot) = opt_usize("rope.dimension_count")? {
            let dim = head_dim.unwrap_or(hidden / heads.max(1));
            if rot != dim {
                return Err(Error::Unsupported {
                    path: path.to_path_buf(),
                    what: format!(
                        "{} = {rot}: partial rotary embeddings (head dim {dim})",
                        key("rope.dimension_count")
                    ),
                });
            }
        }
        let scaling = match meta.optional(&key("rope.scaling.type"), Metadata::get_str)? {
            None | Some("none") => Value::Null,
            Some(kind) => {
                let mut v = json!({ "type": kind });
                if let Some(f) = meta.optional(&key("rope.scaling.factor"), Metadata::get_f64)? {
                    v["factor"] = json!(decimal(f));
                }
                if let Some(n) = opt_usize("rope.scaling.original_context_length")? {
                    v["original_max_position_embeddings"] = json!(n);
                }
                v
            }
        };
        let token_id = |k: &str| meta.optional(&format!("tokenizer.ggml.{k}"), Metadata::get_u32);
        let mut eos = Vec::new();
        for id in [token_id("eos_token_id")?, token_id("eot_token_id")?]
            .into_iter()
            .flatten()
        {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        let raw = json!({
            "architectures": ["Qwen2ForCausalLM"],
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": usize_of("feed_forward_length")?,
            "num_hidden_layers": usize_of("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": opt_usize("attention.head_count_kv")?,
            "head_dim": head_dim,
            "rope_theta": meta.optional(&key("rope.freq_base"), Metadata::get_f64)?.map(decimal),
            "rope_scaling": scaling,
            "rms_norm_eps": float_of("attention.layer_norm_rms_epsilon")?,
            "max_position_embeddings": usize_of("context_length")?,
            "tie_word_embeddings": model.tensor_info("output.weight").is_none(),
            "torch_dtype": match super::checkpoint::dominant_type(model) {
                Some(t @ (GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)) =>
                    Some(super::checkpoint::dtype_name(t)),
                _ => None,
            },
            "bos_token_id": token_id("bos_token_id")?,
            "eos_token_id": eos,
        });
        Qwen2Config::from_json_str(&raw.to_string(), path).map_err(|e| match e {
            Error::Config {
                path,
                field,
                message,
            } => {
                let base = field.split('.').next().unwrap_or(&field);
                let field = match FIELD_KEYS.iter().find(|(f, _)| *f == base) {
                    Some((_, k)) => format!("{k} ({field} in HF terms)"),
                    None => field,
                };
                Error::Config {
                    path,
                    field,
                    message,
                }
            }
            other => other,
        })
    }
}

/// A float stored as f32 (llama.cpp writes HF's f64 values as f32) read back as the decimal it
/// came from: `1e-6f32` is `9.99999997e-7` as f64, but prints, and so parses, as `0.000001`.
fn decimal(x: f64) -> f64 {
    let narrow = x as f32;
    if f64::from(narrow) == x {
        narrow.to_string().parse().unwrap_or(x)
    } else {
        x
    }
}
