//! Chat templates: the Jinja template a model ships in `tokenizer_config.json` (or
//! `chat_template.jinja`), rendered with minijinja the way transformers' `apply_chat_template` does.

use std::path::Path;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Qwen2.5's ChatML template, used when a model ships no template of its own.
pub const BUILTIN_CHATML: &str = include_str!("chatml.jinja");

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text of the message.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A parsed chat template and the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    origin: String,
    /// Special tokens passed to the template (`eos_token`, `bos_token`, ...).
    special_tokens: serde_json::Map<String, serde_json::Value>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish()
    }
}

impl ChatTemplate {
    /// The model's template: `chat_template.jinja`, else `chat_template` in
    /// `tokenizer_config.json`, else the built-in ChatML template (logged).
    /// For a GGUF model: [`ChatTemplate::from_gguf`].
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if let Some(file) = crate::source::gguf_model_path(dir)? {
            return Self::from_gguf(&qwen2_gguf::GgufModel::open(file)?);
        }
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Map<String, serde_json::Value> = if config_path.exists() {
            let text =
                std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: config_path.clone(),
                source,
            })?
        } else {
            Default::default()
        };
        let special_tokens = special_tokens(&config);
        let jinja_path = dir.join("chat_template.jinja");
        if jinja_path.exists() {
            let source =
                std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?;
            return Self::new(source, jinja_path.display().to_string(), special_tokens);
        }
        match config.get("chat_template") {
            Some(serde_json::Value::String(source)) => Self::new(
                source.clone(),
                config_path.display().to_string(),
                special_tokens,
            ),
            // A list of named templates: use the one named "default".
            Some(serde_json::Value::Array(named)) => {
                let default = named.iter().find(|t| t["name"] == "default");
                match default.and_then(|t| t["template"].as_str()) {
                    Some(source) => Self::new(
                        source.to_string(),
                        format!("{} (template \"default\")", config_path.display()),
                        special_tokens,
                    ),
                    None => Err(Error::Config {
                        path: config_path,
                        field: "chat_template".into(),
                        message: "a list of named templates without one named \"default\"".into(),
                    }),
                }
            }
            Some(other) => Err(Error::Config {
                path: config_path,
                field: "chat_template".into(),
                message: format!("expected a string or a list of named templates, found {other}"),
            }),
            None => {
                tracing::info!(dir = %dir.display(), "the model ships no chat template; using the built-in ChatML template");
                Self::builtin_chatml(special_tokens)
            }
        }
    }

    /// The built-in Qwen2.5 ChatML template.
    pub fn builtin_chatml(
        special_tokens: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self> {
        Self::new(
            BUILTIN_CHATML.to_string(),
            "the built-in ChatML template".into(),
            special_tokens,
        )
    }

    /// Parses `source`; `origin` names it in errors.
    pub fn new(
        source: String,
        origin: String,
        special_tokens: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        // The settings transformers' Jinja environment uses.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", python_tojson);
        env.add_template_owned("chat", source)
            .map_err(|e| Error::ChatTemplate {
                origin: origin.clone(),
                message: describe(&e),
            })?;
        Ok(ChatTemplate {
            env,
            origin,
            special_tokens,
        })
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Renders `messages`; `add_generation_prompt` appends the assistant header. `extra` adds
    /// template variables (for example `enable_thinking: false` for Qwen3 templates).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::ChatTemplate {
                origin: self.origin.clone(),
                message: "no messages to render".into(),
            });
        }
        let mut ctx = self.special_tokens.clone();
        ctx.insert(
            "messages".into(),
            serde_json::to_value(messages).unwrap_or_default(),
        );
        ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
        ctx.insert("tools".into(), serde_json::Value::Null);
        ctx.insert("documents".into(), serde_json::Value::Null);
        for (k, v) in extra {
            ctx.insert(k.clone(), v.clone());
        }
        let template = self.env.get_template("chat").map_err(|e| self.error(&e))?;
        template.render(ctx).map_err(|e| self.error(&e))
    }

    /// Renders OpenAI-style message objects (with `tool_calls`, `tool_call_id`, ... as the
    /// template expects them) and `tools` (function tool objects, or `None`); the assistant
    /// header is appended.
    pub fn render_values(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::ChatTemplate {
                origin: self.origin.clone(),
                message: "no messages to render".into(),
            });
        }
        let mut ctx = self.special_tokens.clone();
        ctx.insert("messages".into(), messages.to_vec().into());
        ctx.insert("add_generation_prompt".into(), true.into());
        ctx.insert(
            "tools".into(),
            tools.map_or(serde_json::Value::Null, |t| t.to_vec().into()),
        );
        ctx.insert("documents".into(), serde_json::Value::Null);
        let template = self.env.get_template("chat").map_err(|e| self.error(&e))?;
        template.render(ctx).map_err(|e| self.error(&e))
    }

    fn error(&self, e: &minijinja::Error) -> Error {
        Error::ChatTemplate {
            origin: self.origin.clone(),
            message: describe(e),
        }
    }
}

/// The special tokens of `tokenizer_config.json` as template variables (`eos_token`, ...).
fn special_tokens(
    config: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    ["bos_token", "eos_token", "pad_token", "unk_token"]
        .iter()
        .filter_map(|&k| {
            let v = match config.get(k)? {
                serde_json::Value::String(s) => s.clone(),
                // AddedToken form: {"content": "...", ...}
                serde_json::Value::Object(o) => o.get("content")?.as_str()?.to_string(),
                _ => return None,
            };
            Some((k.to_string(), v.into()))
        })
        .collect()
}

/// minijinja's message plus the template line, on one line.
fn describe(e: &minijinja::Error) -> String {
    let mut s = match e.kind() {
        ErrorKind::InvalidOperation if e.detail().is_some() => e.detail().unwrap_or("").to_string(),
        _ => e.to_string(),
    };
    if let Some(line) = e.line() {
        s.push_str(&format!(" (template line {line})"));
    }
    s
}

/// `raise_exception(message)`: templates call it to reject a conversation.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: today's date for templates that print it. Supports the `%d %b %Y`
/// style fields Llama-type templates use, in UTC.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    format
        .replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", month)
        .replace("%b", &month[..3])
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

/// `tojson` as transformers defines it: Python's `json.dumps(x, ensure_ascii=False)`, with
/// `", "` / `": "` separators, optional `indent`, keys in insertion order (no HTML escaping).
fn python_tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn write_python_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let (item_sep, newline) = match indent {
        Some(n) => (
            ",".to_string(),
            format!("\n{}", " ".repeat(n * (depth + 1))),
        ),
        None => (", ".to_string(), String::new()),
    };
    let close = indent.map_or(String::new(), |n| format!("\n{}", " ".repeat(n * depth)));
    match v {
        serde_json::Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&item_sep);
                }
                out.push_str(&newline);
                write_python_json(item, indent, depth + 1, out);
            }
            out.push_str(&close);
            out.push(']');
        }
        serde_json::Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(&item_sep);
                }
                out.push_str(&newline);
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_python_json(item, indent, depth + 1, out);
            }
            out.push_str(&close);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}
