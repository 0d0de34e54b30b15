//! JSONL training data: chat conversations, plain text, or pre-tokenized ids with labels.
//!
//! Each line is one record:
//! - `{"messages": [{"role": "...", "content": "..."}, ...]}`: rendered with the model's chat
//!   template; loss only on assistant tokens, up to and including their end-of-turn token.
//! - `{"text": "..."}`: loss on every token.
//! - `{"input_ids": [...], "labels": [...]}`: pre-tokenized; label `-100` carries no loss
//!   (`labels` defaults to `input_ids`).
//!
//! Labels are aligned with the ids, as in HF: position `t` is trained to predict `labels[t + 1]`.

use std::path::{Path, PathBuf};

use qwen2_core::text::{ChatTemplate, Message, TextTokenizer};
use serde_json::Value;

use crate::error::{Result, TrainError};

/// The label that carries no loss (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// One tokenized training sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// One label per id; [`IGNORE`] where no loss is taken.
    pub labels: Vec<i64>,
}

impl Example {
    /// Tokens that carry loss after the causal shift (`labels[1..]` not ignored).
    pub fn label_tokens(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE).count()
    }
}

/// What turns text records into ids: the tokenizer, the chat template and the ids that end
/// an assistant turn.
pub struct TextPipeline<'a> {
    /// The model's tokenizer.
    pub tokenizer: &'a TextTokenizer,
    /// The model's chat template.
    pub template: &'a ChatTemplate,
    /// Ids that end a turn (eos ids, `<|im_end|>`): the last labelled token of an assistant turn.
    pub end_of_turn: Vec<u32>,
}

/// A loaded data file.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The file it came from.
    pub path: PathBuf,
    /// The records, in file order.
    pub examples: Vec<Example>,
    /// How many records were cut to the maximum length.
    pub truncated: usize,
    /// Records with no label token (they add no loss).
    pub without_labels: usize,
}

const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

impl Dataset {
    /// Reads `path`; text records need `text`. Records longer than `max_len` are truncated;
    /// ids must be below `vocab_size`.
    pub fn load(
        path: &Path,
        text: Option<&TextPipeline<'_>>,
        max_len: usize,
        vocab_size: usize,
    ) -> Result<Self> {
        let content = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let mut examples = Vec::new();
        let (mut truncated, mut without_labels) = (0, 0);
        for (i, line) in content.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let err = |message: String| TrainError::Data {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            let value: Value =
                serde_json::from_str(line).map_err(|e| err(format!("not valid JSON: {e}")))?;
            let mut ex = parse_record(&value, text).map_err(err)?;
            if ex.input_ids.is_empty() {
                return Err(err("the record has no tokens".into()));
            }
            if let Some((pos, id)) = ex
                .input_ids
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= vocab_size)
            {
                return Err(err(format!(
                    "token id {id} at position {pos} is outside the vocabulary ({vocab_size} ids)"
                )));
            }
            if ex.input_ids.len() > max_len {
                ex.input_ids.truncate(max_len);
                ex.labels.truncate(max_len);
                truncated += 1;
            }
            if ex.label_tokens() == 0 {
                without_labels += 1;
            }
            examples.push(ex);
        }
        if examples.is_empty() {
            return Err(TrainError::EmptyData {
                path: path.to_path_buf(),
                message: "no records (the file is empty)".into(),
            });
        }
        if without_labels == examples.len() {
            return Err(TrainError::EmptyData {
                path: path.to_path_buf(),
                message:
                    "no record has a token to learn (every label is -100, or no assistant turn)"
                        .into(),
            });
        }
        if truncated > 0 {
            tracing::warn!(truncated, max_len, path = %path.display(), "records truncated to --max-seq-len");
        }
        Ok(Dataset {
            path: path.to_path_buf(),
            examples,
            truncated,
            without_labels,
        })
    }
}

fn parse_record(
    value: &Value,
    text: Option<&TextPipeline<'_>>,
) -> std::result::Result<Example, String> {
    let obj = value
        .as_object()
        .ok_or("a record must be a JSON object with \"messages\", \"text\" or \"input_ids\"")?;
    let need_text = |form: &str| {
        text.ok_or(format!(
            "\"{form}\" records need the model's tokenizer.json, which was not found"
        ))
    };
    if let Some(messages) = obj.get("messages") {
        return chat_example(messages, need_text("messages")?);
    }
    if let Some(t) = obj.get("text") {
        let t = t.as_str().ok_or("\"text\" must be a string")?;
        let ids = need_text("text")?
            .tokenizer
            .encode(t)
            .map_err(|e| e.to_string())?;
        let labels = ids.iter().map(|&i| i as i64).collect();
        return Ok(Example {
            input_ids: ids,
            labels,
        });
    }
    if let Some(ids) = obj.get("input_ids") {
        let ids = int_list(ids, "input_ids")?;
        let input_ids = ids
            .iter()
            .map(|&i| u32::try_from(i).map_err(|_| format!("input id {i} is not a token id")))
            .collect::<std::result::Result<Vec<u32>, _>>()?;
        let labels = match obj.get("labels") {
            Some(l) => int_list(l, "labels")?,
            None => ids.clone(),
        };
        if labels.len() != input_ids.len() {
            return Err(format!(
                "\"labels\" has {} entries but \"input_ids\" has {}",
                labels.len(),
                input_ids.len()
            ));
        }
        if let Some(l) = labels
            .iter()
            .find(|&&l| l != IGNORE && !(0..=u32::MAX as i64).contains(&l))
        {
            return Err(format!("label {l} is neither a token id nor -100"));
        }
        return Ok(Example { input_ids, labels });
    }
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    Err(format!(
        "unknown record form (keys {keys:?}); expected \"messages\", \"text\" or \"input_ids\""
    ))
}

fn int_list(v: &Value, field: &str) -> std::result::Result<Vec<i64>, String> {
    v.as_array()
        .ok_or(format!("\"{field}\" must be a list of integers"))?
        .iter()
        .map(|x| {
            x.as_i64()
                .ok_or(format!("\"{field}\" must be a list of integers"))
        })
        .collect()
}

/// Renders a conversation and labels the assistant turns: for assistant message `i`, the tokens
/// between the rendering of `messages[..i]` with the generation prompt and the first
/// end-of-turn id after it (inclusive), or the end of `messages[..=i]`'s rendering.
fn chat_example(messages: &Value, p: &TextPipeline<'_>) -> std::result::Result<Example, String> {
    let list = messages
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or("\"messages\" must be a non-empty list")?;
    let mut msgs = Vec::with_capacity(list.len());
    for (k, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        let content = m.get("content").and_then(Value::as_str);
        let (Some(role), Some(content)) = (role, content) else {
            return Err(format!(
                "message {k} needs string fields \"role\" and \"content\""
            ));
        };
        if !ROLES.contains(&role) {
            return Err(format!(
                "message {k} has unknown role \"{role}\" (expected one of {ROLES:?})"
            ));
        }
        msgs.push(Message::new(role, content));
    }
    let none = serde_json::Map::new();
    let render = |upto: usize, gen: bool| {
        p.template
            .render(&msgs[..upto], gen, &none)
            .map_err(|e| e.to_string())
    };
    let encode = |s: &str| p.tokenizer.encode(s).map_err(|e| e.to_string());
    let ids = encode(&render(msgs.len(), false)?)?;
    let mut labels = vec![IGNORE; ids.len()];
    for (i, m) in msgs.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let prefix = if i == 0 {
            Vec::new()
        } else {
            encode(&render(i, true)?)?
        };
        let through = encode(&render(i + 1, false)?)?;
        let stable = ids.starts_with(&prefix) && ids.starts_with(&through);
        if !stable || through.len() < prefix.len() {
            return Err(format!(
                "the chat template does not render message {i} as a prefix of the whole \
                 conversation, so its tokens cannot be located (templates that rewrite earlier \
                 turns need one record per turn)"
            ));
        }
        let span = &through[prefix.len()..];
        let end = span
            .iter()
            .position(|id| p.end_of_turn.contains(id))
            .map_or(span.len(), |e| e + 1);
        for t in prefix.len()..prefix.len() + end {
            labels[t] = ids[t] as i64;
        }
    }
    Ok(Example {
        input_ids: ids,
        labels,
    })
}
