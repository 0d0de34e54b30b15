//! The GGUF metadata of a Hugging Face Qwen2 directory, as llama.cpp's `convert_hf_to_gguf.py`
//! writes it for `Qwen2ForCausalLM`: the `qwen2.*` hyperparameters and the tokenizer
//! (`tokenizer.ggml.*`: `get_vocab_base` and `gguf.SpecialVocab`), and the chat template.
//! [`super::tokenizer`] reads these fields back.

use std::path::Path;

use qwen2_gguf::MetadataValue;
use serde_json::{Map, Value};

use crate::config::{Qwen2Config, RopeScaling};
use crate::error::{Error, Result};

use super::config::GGUF_ARCHITECTURE;

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// gguf.SpecialVocab's special token types and the GGUF key suffix of each id.
const SPECIAL_TYPES: &[(&str, &str)] = &[
    ("bos", "bos_token_id"),
    ("eos", "eos_token_id"),
    ("unk", "unknown_token_id"),
    ("sep", "seperator_token_id"),
    ("pad", "padding_token_id"),
    ("cls", "cls_token_id"),
    ("mask", "mask_token_id"),
];

/// Metadata entries in the order they are written.
pub(crate) type Entries = Vec<(String, MetadataValue)>;

/// The `qwen2.*` hyperparameters of `config` (rope scaling: yarn only).
pub(crate) fn model_metadata(config: &Qwen2Config) -> Entries {
    let key = |k: &str| format!("{GGUF_ARCHITECTURE}.{k}");
    let u32_of = |n: usize| MetadataValue::U32(n as u32);
    let mut out = vec![
        (key("block_count"), u32_of(config.num_hidden_layers)),
        (
            key("context_length"),
            u32_of(config.max_position_embeddings),
        ),
        (key("embedding_length"), u32_of(config.hidden_size)),
        (key("feed_forward_length"), u32_of(config.intermediate_size)),
        (
            key("attention.head_count"),
            u32_of(config.num_attention_heads),
        ),
        (
            key("attention.head_count_kv"),
            u32_of(config.num_key_value_heads),
        ),
        (
            key("rope.freq_base"),
            MetadataValue::F32(config.rope_theta as f32),
        ),
        (
            key("attention.layer_norm_rms_epsilon"),
            MetadataValue::F32(config.rms_norm_eps as f32),
        ),
    ];
    if config.head_dim * config.num_attention_heads != config.hidden_size {
        out.push((key("attention.key_length"), u32_of(config.head_dim)));
        out.push((key("attention.value_length"), u32_of(config.head_dim)));
    }
    if let RopeScaling::Yarn(y) = &config.rope_scaling {
        out.push((key("rope.scaling.type"), "yarn".into()));
        out.push((
            key("rope.scaling.factor"),
            MetadataValue::F32(y.factor as f32),
        ));
        out.push((
            key("rope.scaling.original_context_length"),
            u32_of(y.original_max_position_embeddings),
        ));
    }
    out
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The tokenizer and chat template metadata of model directory `dir` (`tokenizer.json`,
/// `tokenizer_config.json`, `config.json`, `chat_template.jinja`) for `vocab_size` ids: ids
/// without a token become `[PADi]` (UNUSED); added tokens are CONTROL when special or
/// `<|...|>`, else USER_DEFINED. Errors name the file.
pub(crate) fn tokenizer_metadata(dir: &Path, vocab_size: usize) -> Result<Entries> {
    let tok_path = dir.join("tokenizer.json");
    let tok = read_json(&tok_path)?;
    let err = |message: String| Error::Tokenizer {
        path: tok_path.clone(),
        message,
    };
    if tok["model"]["type"] != "BPE" {
        return Err(err(format!(
            "model type {}: only byte-level BPE (Qwen2's) can be written as GGUF \"gpt2\"",
            tok["model"]["type"]
        )));
    }
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![NORMAL; vocab_size];
    let mut place = |token: &str, id: u64, ty: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            err(format!(
                "token {token:?} has id {id}, beyond the vocabulary size {vocab_size} \
                 (config.json)"
            ))
        })?;
        *slot = Some(token.to_string());
        types[id as usize] = ty;
        Ok(())
    };
    let vocab = tok["model"]["vocab"]
        .as_object()
        .ok_or_else(|| err("no model.vocab object".into()))?;
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| err(format!("token {token:?}: id {id} is not an integer")))?;
        place(token, id, NORMAL)?;
    }
    let added = tok["added_tokens"].as_array().cloned().unwrap_or_default();
    for t in &added {
        let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) else {
            return Err(err(format!("added token {t} lacks an id or content")));
        };
        let looks_special = content.starts_with("<|") && content.ends_with("|>");
        let special = t["special"].as_bool().unwrap_or(false) || looks_special;
        place(content, id, if special { CONTROL } else { USER_DEFINED })?;
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = UNUSED;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let merges = match tok["model"]["merges"].as_array() {
        None => Vec::new(),
        Some(list) => list
            .iter()
            .map(|m| match m {
                Value::String(s) => Ok(s.clone()),
                Value::Array(pair) if pair.len() == 2 => {
                    // gguf-py's encoding of a space inside a merge part: U+0120.
                    let part = |v: &Value| v.as_str().map(|s| s.replace(' ', "\u{120}"));
                    match (part(&pair[0]), part(&pair[1])) {
                        (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                        _ => Err(err(format!("merge {m} is not two strings"))),
                    }
                }
                other => Err(err(format!("merge {other} is neither \"a b\" nor [a, b]"))),
            })
            .collect::<Result<Vec<_>>>()?,
    };

    let mut out: Entries = vec![
        ("tokenizer.ggml.model".into(), "gpt2".into()),
        ("tokenizer.ggml.pre".into(), "qwen2".into()),
        ("tokenizer.ggml.tokens".into(), tokens.clone().into()),
        ("tokenizer.ggml.token_type".into(), types.into()),
        ("tokenizer.ggml.merges".into(), merges.into()),
    ];

    // gguf.SpecialVocab: ids from tokenizer_config.json's `<typ>_token` (by added token
    // content), then config.json's `<typ>_token_id` for those still unset.
    let config_path = dir.join("tokenizer_config.json");
    let tok_config = if config_path.is_file() {
        read_json(&config_path)?
    } else {
        Value::Object(Map::new())
    };
    let model_config = read_json(&dir.join("config.json"))?;
    for (typ, key) in SPECIAL_TYPES {
        let content = match &tok_config[format!("{typ}_token")] {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => o.get("content").and_then(Value::as_str),
            _ => None,
        };
        let from_added = content.and_then(|c| {
            added
                .iter()
                .find(|t| t["content"] == c)
                .and_then(|t| t["id"].as_u64())
        });
        let id = from_added.or_else(|| model_config[format!("{typ}_token_id")].as_u64());
        if let Some(id) = id.filter(|&id| (id as usize) < vocab_size) {
            out.push((
                format!("tokenizer.ggml.{key}"),
                MetadataValue::U32(id as u32),
            ));
        }
    }
    for typ in ["bos", "eos", "sep"] {
        if let Some(flag) = tok_config[format!("add_{typ}_token")].as_bool() {
            out.push((format!("tokenizer.ggml.add_{typ}_token"), flag.into()));
        }
    }
    out.extend(chat_template(dir, &tok_config)?);
    Ok(out)
}

/// `tokenizer.chat_template` (and `tokenizer.chat_template.NAME` for named extra templates):
/// tokenizer_config.json's `chat_template`, else `chat_template.jinja`.
fn chat_template(dir: &Path, tok_config: &Value) -> Result<Entries> {
    let key = "tokenizer.chat_template";
    match &tok_config["chat_template"] {
        Value::String(s) => return Ok(vec![(key.into(), s.as_str().into())]),
        Value::Array(named) => {
            let mut out = Entries::new();
            for t in named {
                let (Some(name), Some(source)) = (t["name"].as_str(), t["template"].as_str())
                else {
                    continue;
                };
                let k = if name == "default" {
                    key.to_string()
                } else {
                    format!("{key}.{name}")
                };
                out.push((k, source.into()));
            }
            return Ok(out);
        }
        _ => {}
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let source = std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?;
        return Ok(vec![(key.into(), source.into())]);
    }
    tracing::info!(dir = %dir.display(), "no chat template to write");
    Ok(Vec::new())
}
