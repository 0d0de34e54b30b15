//! `POST /v1/chat/completions`: plain and streamed (SSE) answers, with Hermes tool calls.

use std::time::Instant;

use axum::extract::State;
use axum::response::sse::Event;
use axum::response::Response;
use serde_json::{json, Value};

use super::chat_messages::{template_messages, tool_setup};
use super::error::{from_body, ApiError, OpenAiJson};
use super::jobs::{
    closing_events, done_event, new_id, run_blocking, sse_response, stream_error_event, JobSet,
    ResponseMeta, UsageTotals,
};
use super::logging::{StreamLog, StreamLogged};
use super::request::{ChatCompletionRequest, SamplingFields};
use super::tool_calls::{parse_tool_calls, ParsedToolCall, ToolCallStreamParser, ToolStreamOutput};
use super::validate::{check_context, validate_sampling, MAX_TOP_LOGPROBS};
use super::AppState;
use crate::engine_api::{Job, JobEvent, StepLogprobs, TokenLogprob};

const PATH: &str = "/v1/chat/completions";

/// The handler.
pub async fn chat_completions(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<Value>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let request: ChatCompletionRequest = from_body(&body)?;
    let params = validate_sampling(&from_body::<SamplingFields>(&body)?)?;
    let logprobs = chat_logprobs(request.logprobs, request.top_logprobs)?;
    let tools = tool_setup(
        request.tools.as_deref(),
        request.tool_choice.as_ref(),
        request.response_format.as_ref(),
    )?;
    let messages = template_messages(&request.messages)?;
    let engine = state.engine.clone();
    let template_tools = tools.tools.clone();
    let prompt_ids = run_blocking(move || {
        let prompt = engine
            .render_chat(&messages, template_tools.as_deref())
            .map_err(|error| {
                ApiError::invalid("messages", format!("the chat template failed: {error}"))
            })?;
        engine
            .tokenize(&prompt)
            .map_err(|error| ApiError::internal(format!("tokenization failed: {error}")))
    })
    .await?;
    check_context(
        prompt_ids.len(),
        params.max_tokens,
        state.engine.context_length(),
        "messages",
    )?;
    let jobs = (0..params.n)
        .map(|index| Job {
            prompt_ids: prompt_ids.clone(),
            sampling: params.sampling_for_choice(index),
            max_tokens: params.max_tokens,
            stop: params.stop.clone(),
            chat: true,
            logprobs,
            keep_special_tokens: tools.parse_calls,
        })
        .collect();
    let jobs = JobSet::submit(state.engine.as_ref(), jobs, &state.metrics, started)?;
    let meta = ResponseMeta::new("chatcmpl", &state.model_id);
    if params.stream {
        let stream = ChatStream {
            parsers: (0..jobs.len())
                .map(|_| tools.parse_calls.then(ToolCallStreamParser::new))
                .collect(),
            calls_sent: vec![0; jobs.len()],
            jobs,
            meta,
            include_usage: params.include_usage,
            logprobs: logprobs.is_some(),
            opened: false,
            ended: false,
            log: StreamLog::new(PATH, started),
        };
        let mut response = sse_response(stream, ChatStream::step, state.keep_alive);
        response.extensions_mut().insert(StreamLogged);
        return Ok(response);
    }
    collect_answer(jobs, meta, tools.parse_calls, logprobs.is_some()).await
}

/// `logprobs` / `top_logprobs` → the job's `logprobs` setting.
fn chat_logprobs(logprobs: Option<bool>, top: Option<i64>) -> Result<Option<usize>, ApiError> {
    let wanted = logprobs.unwrap_or(false);
    match top {
        Some(_) if !wanted => Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        )),
        Some(k) if !(0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Err(ApiError::invalid(
            "top_logprobs",
            format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
        )),
        Some(k) => Ok(Some(k as usize)),
        None => Ok(wanted.then_some(0)),
    }
}

fn token_json(token: &TokenLogprob) -> Value {
    json!({"token": token.token, "logprob": token.logprob, "bytes": token.bytes})
}

/// Chat `logprobs.content` entries.
fn logprob_entries(steps: &[StepLogprobs]) -> Vec<Value> {
    steps
        .iter()
        .map(|step| {
            let mut entry = token_json(&step.chosen);
            if let Some(object) = entry.as_object_mut() {
                let top = step.top.iter().map(token_json).collect::<Vec<_>>();
                object.insert("top_logprobs".into(), Value::Array(top));
            }
            entry
        })
        .collect()
}

fn tool_call_json(call: &ParsedToolCall) -> Value {
    json!({
        "id": new_id("call"),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    })
}

/// One choice's text and tokens as they arrive.
#[derive(Default)]
struct ChoiceText {
    text: String,
    logprobs: Vec<StepLogprobs>,
    finish_reason: Option<&'static str>,
}

async fn collect_answer(
    mut jobs: JobSet,
    meta: ResponseMeta,
    parse_calls: bool,
    with_logprobs: bool,
) -> Result<Response, ApiError> {
    let mut choices: Vec<ChoiceText> = (0..jobs.len()).map(|_| ChoiceText::default()).collect();
    let mut usage = UsageTotals::default();
    while let Some((index, event)) = jobs.next_event().await {
        let choice = &mut choices[index];
        match event {
            JobEvent::Started => {}
            JobEvent::Delta { text, logprobs, .. } => {
                choice.text.push_str(&text);
                choice.logprobs.extend(logprobs);
            }
            JobEvent::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                usage.add_choice(prompt_tokens, completion_tokens, cached_tokens);
                choice.finish_reason = Some(finish_reason.as_str());
            }
            JobEvent::Error { message } => {
                jobs.finish_choice(index, "error");
                tracing::warn!(error = %message, "chat completion failed");
                return Err(ApiError::internal(message));
            }
        }
    }
    let mut body_choices = Vec::with_capacity(choices.len());
    for (index, choice) in choices.into_iter().enumerate() {
        let (content, calls) = if parse_calls {
            let parsed = parse_tool_calls(&choice.text);
            (parsed.content, parsed.calls)
        } else {
            (Some(choice.text), Vec::new())
        };
        let finish_reason = if calls.is_empty() {
            choice.finish_reason.unwrap_or("stop")
        } else {
            "tool_calls"
        };
        jobs.finish_choice(index, finish_reason);
        let mut message = json!({"role": "assistant", "content": content});
        if let (false, Some(object)) = (calls.is_empty(), message.as_object_mut()) {
            let calls = calls.iter().map(tool_call_json).collect::<Vec<_>>();
            object.insert("tool_calls".into(), Value::Array(calls));
        }
        let logprobs = if with_logprobs {
            json!({"content": logprob_entries(&choice.logprobs)})
        } else {
            Value::Null
        };
        body_choices.push(json!({
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }));
    }
    Ok(meta.response("chat.completion", body_choices, usage))
}

/// The state of one streamed chat answer.
struct ChatStream {
    jobs: JobSet,
    meta: ResponseMeta,
    /// Per choice: the tool-call parser when tools are parsed.
    parsers: Vec<Option<ToolCallStreamParser>>,
    /// Per choice: tool calls sent so far (their `index`).
    calls_sent: Vec<usize>,
    include_usage: bool,
    logprobs: bool,
    opened: bool,
    ended: bool,
    log: StreamLog,
}

impl ChatStream {
    /// The next batch of events; `None` after `[DONE]`.
    async fn step(mut self) -> Option<(Vec<Event>, Self)> {
        if self.ended {
            return None;
        }
        if !self.opened {
            self.opened = true;
            let events = (0..self.jobs.len())
                .map(|index| {
                    self.chunk(
                        index,
                        json!({"role": "assistant", "content": ""}),
                        None,
                        None,
                    )
                })
                .collect();
            return Some((events, self));
        }
        let events = match self.jobs.next_event().await {
            None => {
                self.ended = true;
                self.log.outcome = "done";
                let usage = self.include_usage.then(|| self.log.usage.to_json());
                closing_events(&self.meta, "chat.completion.chunk", usage)
            }
            Some((_, JobEvent::Started)) => Vec::new(),
            Some((index, JobEvent::Delta { text, logprobs, .. })) => {
                let content = match &mut self.parsers[index] {
                    Some(parser) => parser.push(&text),
                    None => text,
                };
                let logprobs = (self.logprobs && !logprobs.is_empty())
                    .then(|| json!({"content": logprob_entries(&logprobs)}));
                if content.is_empty() && logprobs.is_none() {
                    Vec::new()
                } else {
                    vec![self.chunk(index, json!({"content": content}), logprobs, None)]
                }
            }
            Some((
                index,
                JobEvent::Done {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                    cached_tokens,
                },
            )) => {
                self.log
                    .usage
                    .add_choice(prompt_tokens, completion_tokens, cached_tokens);
                let mut events = self.flush_parser(index);
                let reason = if self.calls_sent[index] > 0 {
                    "tool_calls"
                } else {
                    finish_reason.as_str()
                };
                self.jobs.finish_choice(index, reason);
                events.push(self.chunk(index, json!({}), None, Some(reason)));
                events
            }
            Some((index, JobEvent::Error { message })) => {
                self.jobs.finish_choice(index, "error");
                tracing::warn!(error = %message, "streamed chat completion failed");
                self.ended = true;
                self.log.outcome = "error";
                vec![stream_error_event(&message), done_event()]
            }
        };
        Some((events, self))
    }

    /// The rest of choice `index`'s content and its tool calls at the end of its answer.
    fn flush_parser(&mut self, index: usize) -> Vec<Event> {
        let Some(parser) = self.parsers[index].take() else {
            return Vec::new();
        };
        let mut events = Vec::new();
        for output in parser.finish() {
            match output {
                ToolStreamOutput::Content(text) => {
                    events.push(self.chunk(index, json!({"content": text}), None, None));
                }
                ToolStreamOutput::Call(call) => {
                    let call_json = json!({
                        "index": self.calls_sent[index],
                        "id": new_id("call"),
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    });
                    self.calls_sent[index] += 1;
                    events.push(self.chunk(index, json!({"tool_calls": [call_json]}), None, None));
                }
            }
        }
        events
    }

    fn chunk(
        &self,
        index: usize,
        delta: Value,
        logprobs: Option<Value>,
        finish_reason: Option<&str>,
    ) -> Event {
        let choice = json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason});
        self.meta
            .chunk_event("chat.completion.chunk", choice, self.include_usage)
    }
}
