//! The contract between the HTTP layer and the engine that owns the model.
//!
//! Handlers validate a request, render and tokenize it through [`Engine`], then [`Engine::submit`]
//! a [`Job`]; the engine's scheduler thread streams [`JobEvent`]s back on the job's channel.
//! Dropping the [`JobHandle`] (a client that went away) cancels the job at the engine's next tick.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Token selection for one job: OpenAI's fields plus the usual extensions. `None` takes the
/// model's generation_config.json default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingSettings {
    /// 0 = greedy.
    pub temperature: Option<f32>,
    /// 0 = off.
    pub top_k: Option<usize>,
    /// 1 = off.
    pub top_p: Option<f32>,
    /// 0 = off.
    pub min_p: Option<f32>,
    /// HF repetition penalty, 1 = off.
    pub repetition_penalty: Option<f32>,
    /// OpenAI frequency penalty in [-2, 2], 0 = off: logit -= penalty × count of the token in
    /// the generated text so far.
    pub frequency_penalty: f32,
    /// OpenAI presence penalty in [-2, 2], 0 = off: logit -= penalty if the token was generated.
    pub presence_penalty: f32,
    /// Sampler seed; `None` draws a fresh one.
    pub seed: Option<u64>,
    /// Added to the logits of these token ids before sampling (OpenAI: -100..=100).
    pub logit_bias: Vec<(u32, f32)>,
}

/// One generation request, already rendered and tokenized.
#[derive(Debug, Clone)]
pub struct Job {
    /// The prompt ids (non-empty; prompt + max_tokens fits the context: the handler checked).
    pub prompt_ids: Vec<u32>,
    /// Token selection.
    pub sampling: SamplingSettings,
    /// Tokens to generate at most; `None`: until eos or the context is full.
    pub max_tokens: Option<usize>,
    /// Generation ends before any of these strings; the text up to it is sent, never the
    /// string itself.
    pub stop: Vec<String>,
    /// End on the chat template's turn markers (`<|im_end|>`) as well as the model's eos ids
    /// (chat completions) or on the eos ids only (completions).
    pub chat: bool,
    /// `Some(k)`: report each generated token's log-probability and the `k` (≤ 20) most likely
    /// alternatives.
    pub logprobs: Option<usize>,
    /// Keep special tokens in the text (needed to see `<tool_call>` tags when tools are given).
    pub keep_special_tokens: bool,
}

/// A token's log-probability (natural log of the softmax of the logits the sampler saw,
/// before temperature and filters, as OpenAI reports it).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's text (its bytes decoded lossily when it is part of a UTF-8 sequence).
    pub token: String,
    /// The token's raw bytes.
    pub bytes: Vec<u8>,
    /// Natural-log probability.
    pub logprob: f32,
}

/// A generated token's log-probability and the most likely alternatives at that step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLogprobs {
    /// The chosen token.
    pub chosen: TokenLogprob,
    /// The `k` most likely tokens, most likely first.
    pub top: Vec<TokenLogprob>,
}

/// Why a job ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context limit.
    Length,
}

impl FinishReason {
    /// `"stop"` or `"length"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the engine sends back for a job, in order: zero or more `Delta`s, then exactly one
/// `Done` or `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    /// The prompt is prefilled and generation has started (time to first token is measured at
    /// the first `Delta`; this lets the HTTP layer stop sending keep-alive comments).
    Started,
    /// New text (UTF-8 complete; stop strings held back until they can be ruled out) and the
    /// tokens it came from. `text` may be empty when a token only completes part of a
    /// character; `logprobs` has one entry per token when asked for.
    Delta {
        /// New text.
        text: String,
        /// The token ids generated for it.
        ids: Vec<u32>,
        /// Per-token log-probabilities (when the job asked for them).
        logprobs: Vec<StepLogprobs>,
    },
    /// The job ended normally.
    Done {
        /// Why.
        finish_reason: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens (including an eos token, not a stop string's tokens after it).
        completion_tokens: usize,
        /// Prompt tokens served from a cached prefix (not prefilled again).
        cached_tokens: usize,
    },
    /// The job failed (non-finite logits under every plan, an internal error). Text already
    /// sent stays valid.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// Why a job was not accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// The waiting queue is full (→ 503 with Retry-After).
    #[error("the server is busy: {waiting} requests are waiting (--max-queue); retry shortly")]
    QueueFull {
        /// Requests waiting.
        waiting: usize,
    },
    /// The engine is shutting down or has stopped (→ 503).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The job itself is invalid (→ 400).
    #[error("{0}")]
    Invalid(String),
}

/// A submitted job: its event stream. Dropping it cancels the job.
pub struct JobHandle {
    /// The job's events.
    pub events: tokio::sync::mpsc::UnboundedReceiver<JobEvent>,
    /// Set when the handle is dropped; the engine checks it every tick.
    pub cancelled: Arc<AtomicBool>,
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }
}

/// Counters the engine keeps for `/metrics` (monotonic totals and current gauges).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    /// Jobs waiting to start.
    pub waiting: usize,
    /// Jobs being prefilled or decoded.
    pub running: usize,
    /// Total prompt tokens prefilled (not counting cached prefixes).
    pub prompt_tokens_total: u64,
    /// Total prompt tokens served from cached prefixes.
    pub cached_prompt_tokens_total: u64,
    /// Total generated tokens.
    pub generated_tokens_total: u64,
    /// Non-finite values seen (a row's logits or a forward pass), total.
    pub nonfinite_events_total: u64,
    /// Jobs re-run under a safer precision plan, total.
    pub fallbacks_total: u64,
    /// Batched decode steps run, total, and rows decoded in them (rows / steps = mean batch).
    pub decode_steps_total: u64,
    /// Rows decoded in all decode steps.
    pub decode_rows_total: u64,
}

/// A chat message as the template sees it: OpenAI's message object (role, content, and for
/// tool use `tool_calls` with `arguments` already parsed into JSON objects, `tool_call_id`).
pub type TemplateMessage = serde_json::Value;

/// The model side of the server.
pub trait Engine: Send + Sync + 'static {
    /// The model's id in `/v1/models` and responses (the model directory's name).
    fn model_id(&self) -> &str;
    /// Positions the model (and `--max-model-len`) allows: prompt + max_tokens must fit.
    fn context_length(&self) -> usize;
    /// Whether the model is loaded and the scheduler runs (`/health` 200 vs 503).
    fn ready(&self) -> bool;
    /// Text → ids (no special tokens added; Qwen2 adds none).
    fn tokenize(&self, text: &str) -> Result<Vec<u32>, String>;
    /// Ids → text; `skip_special` drops special tokens such as `<|im_end|>`.
    fn detokenize(&self, ids: &[u32], skip_special: bool) -> Result<String, String>;
    /// Renders a conversation with the model's chat template, `tools` (OpenAI tool objects)
    /// passed to the template, the assistant header appended.
    fn render_chat(
        &self,
        messages: &[TemplateMessage],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String, String>;
    /// Queues a job; events arrive on the handle.
    fn submit(&self, job: Job) -> Result<JobHandle, SubmitError>;
    /// Current counters.
    fn stats(&self) -> EngineStats;
    /// Stops admitting jobs and ends running ones (their streams get `Error` "shutting down")
    /// once `grace` has passed; returns when the scheduler has stopped.
    fn shutdown(&self, grace: std::time::Duration);
}
