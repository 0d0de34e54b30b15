//! HF `config.json` → [`Qwen2Config`]: HF field names, both the transformers-4 and -5 spellings,
//! and a clear error for anything that would change the math without us implementing it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Architectures whose graph is exactly the one in [`crate::model`].
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["Qwen2ForCausalLM"];

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = theta^(-2i/head_dim)`.
    Default,
    /// YaRN, as transformers' `_compute_yarn_parameters`.
    Yarn(YarnParams),
}

/// Parameters of YaRN scaling (field names as in HF's `rope_scaling`).
#[derive(Debug, Clone, PartialEq)]
pub struct YarnParams {
    /// Context extension factor.
    pub factor: f64,
    /// Context length the model was trained with before extension.
    pub original_max_position_embeddings: usize,
    /// Scale applied to cos/sin; `None` means `0.1 * ln(factor) + 1`.
    pub attention_factor: Option<f64>,
    /// Fast boundary of the ramp, in rotations (default 32).
    pub beta_fast: f64,
    /// Slow boundary of the ramp, in rotations (default 1).
    pub beta_slow: f64,
    /// Whether the correction range is rounded to whole dimensions (default true).
    pub truncate: bool,
}

/// A validated Qwen2 / Qwen2.5 configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2Config {
    /// Number of token ids.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (GQA when smaller than the query heads, MQA when 1).
    pub num_key_value_heads: usize,
    /// Width of one head (`hidden_size / num_attention_heads` unless the config says otherwise).
    pub head_dim: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Whether `lm_head` reuses `embed_tokens`.
    pub tie_word_embeddings: bool,
    /// Longest sequence the positions are defined for.
    pub max_position_embeddings: usize,
    /// Dtype the checkpoint was saved in (`torch_dtype` / `dtype`), if stated.
    pub torch_dtype: Option<String>,
    /// Beginning-of-sequence id, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids (HF allows one id or a list).
    pub eos_token_ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    max_position_embeddings: Option<usize>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    use_sliding_window: Option<bool>,
    sliding_window: Option<Value>,
    hidden_act: Option<String>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    attention_bias: Option<bool>,
}

impl Qwen2Config {
    /// Reads and validates `config.json` (a file, or a model directory containing one).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("config.json");
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Self::from_json_str(&text, &path)
    }

    /// Parses and validates config JSON; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_raw(raw, path)
    }

    fn from_raw(raw: RawConfig, path: &Path) -> Result<Self> {
        let p = path.to_path_buf();
        let unsupported = |what: String| Error::Unsupported {
            path: p.clone(),
            what,
        };
        let field_err = |field: &str, message: String| Error::Config {
            path: p.clone(),
            field: field.into(),
            message,
        };
        let required = |v: Option<usize>, field: &str| -> Result<usize> {
            match v {
                Some(0) => Err(field_err(field, "must be positive".into())),
                Some(n) => Ok(n),
                None => Err(field_err(field, "is missing".into())),
            }
        };

        match &raw.architectures {
            Some(archs)
                if archs
                    .iter()
                    .any(|a| SUPPORTED_ARCHITECTURES.contains(&a.as_str())) => {}
            Some(archs) => {
                return Err(unsupported(format!(
                    "architecture {archs:?}: this engine runs {SUPPORTED_ARCHITECTURES:?}"
                )))
            }
            None if raw.model_type.as_deref() == Some("qwen2") => {}
            None => {
                return Err(field_err(
                    "architectures",
                    "is missing (and model_type is not \"qwen2\")".into(),
                ))
            }
        }
        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(unsupported(format!(
                    "hidden_act \"{act}\": Qwen2's MLP uses silu"
                )));
            }
        }
        if raw.attention_bias == Some(false) {
            return Err(unsupported(
                "attention_bias=false: Qwen2 attention has q/k/v biases".into(),
            ));
        }

        let vocab_size = required(raw.vocab_size, "vocab_size")?;
        let hidden_size = required(raw.hidden_size, "hidden_size")?;
        let intermediate_size = required(raw.intermediate_size, "intermediate_size")?;
        let num_hidden_layers = required(raw.num_hidden_layers, "num_hidden_layers")?;
        let num_attention_heads = required(raw.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = required(
            raw.num_key_value_heads.or(Some(num_attention_heads)),
            "num_key_value_heads",
        )?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(field_err(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads={num_attention_heads}"),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => required(Some(d), "head_dim")?,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(field_err(
                        "hidden_size",
                        format!("{hidden_size} is not divisible by num_attention_heads={num_attention_heads}"),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        if head_dim % 2 != 0 {
            return Err(field_err(
                "head_dim",
                format!("{head_dim} must be even for RoPE"),
            ));
        }
        let max_position_embeddings =
            required(raw.max_position_embeddings, "max_position_embeddings")?;

        if raw.use_sliding_window == Some(true) {
            let window = raw.sliding_window.as_ref().and_then(Value::as_u64);
            let covers_all = window.is_some_and(|w| w as usize >= max_position_embeddings);
            if !covers_all {
                return Err(unsupported(format!(
                    "use_sliding_window=true with sliding_window={}: sliding-window attention is not implemented",
                    raw.sliding_window.as_ref().map_or("null".into(), |v| v.to_string())
                )));
            }
        }

        // transformers 5 keeps rope_theta and the scaling in `rope_parameters`.
        let rope_params = raw.rope_parameters.as_ref().filter(|v| !v.is_null());
        let rope_theta = raw
            .rope_theta
            .or_else(|| {
                rope_params
                    .and_then(|v| v.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(10_000.0);
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(field_err("rope_theta", format!("{rope_theta} must be > 1")));
        }
        let scaling_value = raw
            .rope_scaling
            .as_ref()
            .filter(|v| !v.is_null())
            .or(rope_params);
        let scaling_field = if raw.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            "rope_scaling"
        } else {
            "rope_parameters"
        };
        let rope_scaling = match scaling_value {
            None => RopeScaling::Default,
            Some(v) => parse_rope_scaling(v, max_position_embeddings, path, scaling_field)?,
        };

        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(field_err(
                "rms_norm_eps",
                format!("{rms_norm_eps} must be > 0"),
            ));
        }

        Ok(Qwen2Config {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rope_theta,
            rope_scaling,
            rms_norm_eps,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            max_position_embeddings,
            torch_dtype: raw.torch_dtype.or(raw.dtype),
            bos_token_id: raw
                .bos_token_id
                .as_ref()
                .and_then(Value::as_u64)
                .map(|v| v as u32),
            eos_token_ids: ids_of(raw.eos_token_id.as_ref()),
        })
    }

    /// Query heads per key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}

fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

fn parse_rope_scaling(
    v: &Value,
    max_position_embeddings: usize,
    path: &Path,
    field: &str,
) -> Result<RopeScaling> {
    let p: PathBuf = path.to_path_buf();
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str| v.get(key).and_then(Value::as_f64);
    match kind {
        "default" => Ok(RopeScaling::Default),
        "yarn" => {
            let factor = num("factor").ok_or_else(|| Error::Config {
                path: p.clone(),
                field: format!("{field}.factor"),
                message: "is required for yarn".into(),
            })?;
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(Error::Config {
                    path: p,
                    field: format!("{field}.factor"),
                    message: format!("{factor} must be >= 1"),
                });
            }
            let original = num("original_max_position_embeddings")
                .map(|x| x as usize)
                .unwrap_or(max_position_embeddings);
            for key in ["mscale", "mscale_all_dim"] {
                if num(key).is_some_and(|m| m != 0.0) {
                    return Err(Error::Unsupported {
                        path: p,
                        what: format!("{field}.{key} (DeepSeek-style yarn mscale) for Qwen2"),
                    });
                }
            }
            Ok(RopeScaling::Yarn(YarnParams {
                factor,
                original_max_position_embeddings: original,
                attention_factor: num("attention_factor"),
                beta_fast: num("beta_fast").unwrap_or(32.0),
                beta_slow: num("beta_slow").unwrap_or(1.0),
                truncate: v.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            }))
        }
        other => Err(Error::Unsupported {
            path: p,
            what: format!("{field} type \"{other}\": only default and yarn RoPE are implemented"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Qwen2Config> {
        Qwen2Config::from_json_str(json, Path::new("config.json"))
    }

    /// Qwen2.5-7B-Instruct's config.json as transformers 4 wrote it, with the YaRN block its
    /// model card suggests for long contexts.
    const QWEN25_7B_YARN: &str = r#"{
      "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
      "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
      "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
      "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28,
      "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
      "sliding_window": 131072, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
      "transformers_version": "4.43.1", "use_cache": true, "use_sliding_window": false,
      "vocab_size": 152064,
      "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}
    }"#;

    #[test]
    fn reads_transformers_4_spelling_with_yarn() {
        let c = parse(QWEN25_7B_YARN).unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.kv_groups(), 7);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(c.eos_token_ids, vec![151645]);
        assert_eq!(c.bos_token_id, Some(151643));
        match &c.rope_scaling {
            RopeScaling::Yarn(y) => {
                assert_eq!(y.factor, 4.0);
                assert_eq!(y.original_max_position_embeddings, 32768);
                assert_eq!((y.beta_fast, y.beta_slow), (32.0, 1.0));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(crate::model::context_length(&c), 131072);
    }

    #[test]
    fn reads_transformers_5_spelling() {
        let json = QWEN25_7B_YARN
            .replace(r#""rope_theta": 1000000.0,"#, "")
            .replace(r#""torch_dtype""#, r#""dtype""#)
            .replace(
                r#""rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}"#,
                r#""rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}"#,
            );
        let c = parse(&json).unwrap();
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.rope_scaling, RopeScaling::Default);
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn eos_list_and_null_scaling_are_accepted() {
        let json = QWEN25_7B_YARN
            .replace(
                r#""eos_token_id": 151645"#,
                r#""eos_token_id": [151643, 151645]"#,
            )
            .replace(
                r#"{"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}"#,
                "null",
            );
        let c = parse(&json).unwrap();
        assert_eq!(c.eos_token_ids, vec![151643, 151645]);
        assert_eq!(c.rope_scaling, RopeScaling::Default);
    }

    #[test]
    fn math_changing_fields_are_errors() {
        let cases: [(&[(&str, &str)], &str); 5] = [
            (
                &[(r#""hidden_act": "silu""#, r#""hidden_act": "gelu""#)],
                "gelu",
            ),
            (
                &[
                    (
                        r#""use_sliding_window": false"#,
                        r#""use_sliding_window": true"#,
                    ),
                    (r#""sliding_window": 131072"#, r#""sliding_window": 4096"#),
                ],
                "use_sliding_window=true with sliding_window=4096",
            ),
            (
                &[(r#""num_key_value_heads": 4"#, r#""num_key_value_heads": 5"#)],
                "does not divide",
            ),
            (
                &[(r#""type": "yarn""#, r#""type": "dynamic""#)],
                "\"dynamic\"",
            ),
            (
                &[(r#""hidden_size": 3584"#, r#""hidden_size": 0"#)],
                "`hidden_size`: must be positive",
            ),
        ];
        for (edits, needle) in cases {
            let mut json = QWEN25_7B_YARN.to_string();
            for (from, to) in edits {
                assert!(json.contains(from));
                json = json.replacen(from, to, 1);
            }
            let e = parse(&json).expect_err(needle);
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn sliding_window_covering_the_whole_context_is_harmless() {
        let json = QWEN25_7B_YARN.replace(
            r#""use_sliding_window": false"#,
            r#""use_sliding_window": true"#,
        );
        assert!(
            parse(&json).is_ok(),
            "window 131072 >= max_position_embeddings"
        );
    }
}
