//! Hand-written request bodies (unknown fields are ignored, as OpenAI clients send many).
//! Fields are deliberately loose (`serde_json::Value`, wide integers) so that validation can
//! answer with a message naming the field instead of a generic deserialization error.
//!
//! [`SamplingFields`] is read from the same body as the endpoint's own struct (not through
//! `#[serde(flatten)]`, which would hide the path of a wrongly typed field).

use serde::Deserialize;
use serde_json::Value;

/// Sampling and length fields shared by chat and text completions (read from the same body
/// as the endpoint's own fields).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    /// Tokens to generate at most.
    pub max_tokens: Option<i64>,
    /// Newer alias of `max_tokens` (chat); wins when both are given.
    pub max_completion_tokens: Option<i64>,
    /// 0..=2.
    pub temperature: Option<f64>,
    /// (0, 1].
    pub top_p: Option<f64>,
    /// ≥ 0 (−1 and 0 mean off).
    pub top_k: Option<i64>,
    /// 0..=1.
    pub min_p: Option<f64>,
    /// > 0 (1 = off).
    pub repetition_penalty: Option<f64>,
    /// −2..=2.
    pub frequency_penalty: Option<f64>,
    /// −2..=2.
    pub presence_penalty: Option<f64>,
    /// Sampler seed.
    pub seed: Option<i64>,
    /// A string or a list of strings.
    pub stop: Option<Value>,
    /// Choices to generate, 1..=8.
    pub n: Option<i64>,
    /// Token id (as a string) → bias in −100..=100.
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// Stream the answer as server-sent events.
    pub stream: Option<bool>,
    /// `{"include_usage": bool}`; only with `stream`.
    pub stream_options: Option<StreamOptions>,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and no choices.
    pub include_usage: Option<bool>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    /// The conversation.
    pub messages: Vec<ChatMessageIn>,
    /// OpenAI function tools.
    pub tools: Option<Vec<Value>>,
    /// `"auto"`, `"none"`; others are rejected.
    pub tool_choice: Option<Value>,
    /// `{"type": "text"}` only.
    pub response_format: Option<Value>,
    /// Return log-probabilities of the chosen tokens.
    pub logprobs: Option<bool>,
    /// Alternatives per token, 0..=20 (needs `logprobs`).
    pub top_logprobs: Option<i64>,
}

/// One message of a chat request, as sent.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    /// system / developer / user / assistant / tool.
    pub role: String,
    /// A string, an array of content parts, or null (assistant with tool calls).
    #[serde(default)]
    pub content: Value,
    /// Participant name (passed to the template).
    pub name: Option<String>,
    /// An assistant's earlier tool calls.
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// The call a tool message answers.
    pub tool_call_id: Option<String>,
}

/// An assistant's earlier tool call, as sent.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCallIn {
    /// The call's id.
    pub id: Option<String>,
    /// `"function"`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Name and arguments.
    pub function: FunctionCallIn,
}

/// `tool_calls[].function`.
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCallIn {
    /// The function's name.
    pub name: String,
    /// The arguments: OpenAI sends a JSON string; an object is accepted as well.
    #[serde(default)]
    pub arguments: Value,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// A string, a list with one string, a list of token ids, or a list with one such list.
    pub prompt: Value,
    /// 0..=5 alternatives per token (the legacy API's integer form).
    pub logprobs: Option<i64>,
    /// Unsupported when true.
    pub echo: Option<bool>,
    /// Unsupported when non-empty.
    pub suffix: Option<String>,
    /// Unsupported when > 1.
    pub best_of: Option<i64>,
}

/// `POST /tokenize`: either a prompt or messages rendered with the chat template.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    /// Text to tokenize as is.
    pub prompt: Option<String>,
    /// A conversation to render first.
    pub messages: Option<Vec<ChatMessageIn>>,
    /// Tools passed to the template with `messages`.
    pub tools: Option<Vec<Value>>,
}

/// `POST /detokenize`.
#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    /// Token ids.
    pub tokens: Vec<u32>,
}
