//! The tokenizer and chat template of a GGUF model: the `tokenizer.ggml.*` metadata rebuilt as
//! the Hugging Face `tokenizer.json` it was converted from (Qwen2's byte-level BPE), loaded with
//! the `tokenizers` crate like any other; `tokenizer.chat_template` as the chat template.

use qwen2_gguf::{GgufModel, Metadata};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::text::{ChatTemplate, TextTokenizer};

/// Qwen2's pre-tokenizer split regex (`tokenizer.ggml.pre` = `qwen2`), as in its tokenizer.json.
const QWEN2_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp token types (`tokenizer.ggml.token_type`).
mod token_type {
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
    pub const UNUSED: i64 = 5;
}

/// The `tokenizer.json` equivalent of a GGUF model's tokenizer metadata:
/// `tokenizer.ggml.model` must be `gpt2` and `tokenizer.ggml.pre` `qwen2` (or absent);
/// `tokens` form the BPE vocabulary with `merges` (`"a b"` strings); CONTROL tokens are also
/// special added tokens, USER_DEFINED ones non-special added tokens; UNUSED ones (llama.cpp's `[PADi]` fillers) are left out, as HF has
/// no token for those ids. `add_bos_token`/`add_eos_token` add the bos/eos id to each encoding.
pub fn tokenizer_json(model: &GgufModel) -> Result<Value> {
    let meta = model.metadata();
    let err = |message: String| Error::Tokenizer {
        path: model.path().to_path_buf(),
        message,
    };
    let kind = meta.get_str("tokenizer.ggml.model")?;
    if kind != "gpt2" {
        return Err(err(format!(
            "tokenizer.ggml.model \"{kind}\" is not supported: only \"gpt2\" (byte-level BPE, \
             Qwen2's) is"
        )));
    }
    match meta.optional("tokenizer.ggml.pre", Metadata::get_str)? {
        Some("qwen2") => {}
        None => tracing::warn!(file = %model.path().display(),
            "no tokenizer.ggml.pre: assuming Qwen2's pre-tokenizer"),
        Some(other) => {
            return Err(err(format!(
                "tokenizer.ggml.pre \"{other}\" is not supported: only Qwen2's pre-tokenizer \
                 (\"qwen2\") is implemented"
            )))
        }
    }
    let tokens = meta.get_string_array("tokenizer.ggml.tokens")?;
    let types = match meta.optional("tokenizer.ggml.token_type", Metadata::get_i64_array)? {
        Some(t) if t.len() != tokens.len() => {
            return Err(err(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                t.len(),
                tokens.len()
            )))
        }
        Some(t) => t,
        None => vec![1; tokens.len()],
    };
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (token, &ty)) in tokens.iter().zip(&types).enumerate() {
        match ty {
            token_type::UNUSED => {}
            token_type::CONTROL | token_type::USER_DEFINED => added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == token_type::CONTROL,
            })),
            _ => {}
        }
        // Added tokens go into the BPE vocabulary too: `tokenizers` gives an added token the
        // model's id for its text, and otherwise the next free id after the vocabulary,
        // whatever id tokenizer.json states.
        if ty != token_type::UNUSED && vocab.insert(token.clone(), json!(id)).is_some() {
            tracing::warn!(token = %token, id, "duplicate token in tokenizer.ggml.tokens");
        }
    }
    let merges = meta
        .optional("tokenizer.ggml.merges", Metadata::get_string_array)?
        .unwrap_or_default()
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok(json!([a, b])),
            None => Err(err(format!("merge \"{m}\" is not two tokens: \"a b\""))),
        })
        .collect::<Result<Vec<_>>>()?;

    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
    });
    let token_at = |key: &str| -> Result<Option<(u32, String)>> {
        let Some(id) = meta.optional(&format!("tokenizer.ggml.{key}"), Metadata::get_u32)? else {
            return Ok(None);
        };
        match tokens.get(id as usize) {
            Some(t) => Ok(Some((id, t.clone()))),
            None => Err(err(format!(
                "tokenizer.ggml.{key} = {id} is outside the {} tokens",
                tokens.len()
            ))),
        }
    };
    let flag = |key: &str| meta.optional(&format!("tokenizer.ggml.{key}"), Metadata::get_bool);
    let prefix = match flag("add_bos_token")? {
        Some(true) => token_at("bos_token_id")?,
        _ => None,
    };
    let suffix = match flag("add_eos_token")? {
        Some(true) => token_at("eos_token_id")?,
        _ => None,
    };
    let post_processor = if prefix.is_none() && suffix.is_none() {
        byte_level.clone()
    } else {
        json!({ "type": "Sequence", "processors": [byte_level, template(prefix, suffix)] })
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": { "type": "NFC" },
        "pre_tokenizer": { "type": "Sequence", "pretokenizers": [
            { "type": "Split", "pattern": { "Regex": QWEN2_SPLIT_REGEX },
              "behavior": "Isolated", "invert": false },
            byte_level,
        ]},
        "post_processor": post_processor,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "",
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

/// A TemplateProcessing post-processor that puts `prefix` before and `suffix` after each
/// sequence.
fn template(prefix: Option<(u32, String)>, suffix: Option<(u32, String)>) -> Value {
    let special = |t: &(u32, String), type_id: u32| json!({ "SpecialToken": { "id": t.1, "type_id": type_id } });
    let sequence = |id: &str, type_id: u32| json!({ "Sequence": { "id": id, "type_id": type_id } });
    let wrap = |id: &str, type_id: u32| {
        let mut v: Vec<Value> = prefix.iter().map(|t| special(t, type_id)).collect();
        v.push(sequence(id, type_id));
        v.extend(suffix.iter().map(|t| special(t, type_id)));
        v
    };
    let mut pair = wrap("A", 0);
    pair.extend(wrap("B", 1));
    let special_tokens: Map<String, Value> = prefix
        .iter()
        .chain(&suffix)
        .map(|(id, t)| (t.clone(), json!({ "id": t, "ids": [id], "tokens": [t] })))
        .collect();
    json!({ "type": "TemplateProcessing", "single": wrap("A", 0), "pair": pair,
            "special_tokens": special_tokens })
}

/// The special tokens of a GGUF model as chat template variables (`bos_token`, `eos_token`,
/// `pad_token`, `unk_token`), from `tokenizer.ggml.{bos,eos,padding,unknown}_token_id`.
pub fn special_tokens(model: &GgufModel) -> Result<Map<String, Value>> {
    let meta = model.metadata();
    let tokens = meta.get_string_array("tokenizer.ggml.tokens")?;
    let mut out = Map::new();
    for (var, key) in [
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("pad_token", "padding_token_id"),
        ("unk_token", "unknown_token_id"),
    ] {
        let id = meta.optional(&format!("tokenizer.ggml.{key}"), Metadata::get_u32)?;
        if let Some(token) = id.and_then(|id| tokens.get(id as usize)) {
            out.insert(var.to_string(), json!(token));
        }
    }
    Ok(out)
}

impl TextTokenizer {
    /// The tokenizer of a GGUF model (see [`tokenizer_json`]); errors name the file.
    pub fn from_gguf(model: &GgufModel) -> Result<Self> {
        let json = tokenizer_json(model)?;
        Self::from_json_bytes(json.to_string().as_bytes(), model.path())
    }
}

impl ChatTemplate {
    /// The chat template of a GGUF model (`tokenizer.chat_template`, else the built-in ChatML
    /// template), with its bos/eos/pad/unk tokens as template variables.
    pub fn from_gguf(model: &GgufModel) -> Result<Self> {
        let special = special_tokens(model)?;
        let meta = model.metadata();
        match meta.optional("tokenizer.chat_template", Metadata::get_str)? {
            Some(source) => Self::new(
                source.to_string(),
                format!("{} (tokenizer.chat_template)", model.path().display()),
                special,
            ),
            None => {
                tracing::info!(file = %model.path().display(),
                    "the GGUF model has no chat template; using the built-in ChatML template");
                Self::builtin_chatml(special)
            }
        }
    }
}
