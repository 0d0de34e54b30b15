//! `POST /v1/completions`: the legacy text completion API, plain and streamed.

use std::time::Instant;

use axum::extract::State;
use axum::response::sse::Event;
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::error::{from_body, ApiError, OpenAiJson};
use super::jobs::{
    closing_events, done_event, run_blocking, sse_response, stream_error_event, JobSet,
    ResponseMeta, UsageTotals,
};
use super::logging::{StreamLog, StreamLogged};
use super::request::{CompletionRequest, SamplingFields};
use super::validate::{check_context, validate_sampling};
use super::AppState;
use crate::engine_api::{Job, JobEvent, StepLogprobs};

const PATH: &str = "/v1/completions";
/// Most alternatives per token in the legacy API.
const MAX_COMPLETION_LOGPROBS: i64 = 5;

/// The prompt as given: text to tokenize, or ids.
enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
}

/// The handler.
pub async fn completions(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<Value>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let request: CompletionRequest = from_body(&body)?;
    let params = validate_sampling(&from_body::<SamplingFields>(&body)?)?;
    if request.echo.unwrap_or(false) {
        return Err(ApiError::invalid("echo", "`echo` is not supported"));
    }
    if request
        .suffix
        .as_deref()
        .is_some_and(|suffix| !suffix.is_empty())
    {
        return Err(ApiError::invalid("suffix", "`suffix` is not supported"));
    }
    if request.best_of.is_some_and(|best_of| best_of > 1) {
        return Err(ApiError::invalid(
            "best_of",
            "`best_of` > 1 is not supported",
        ));
    }
    let logprobs = match request.logprobs {
        None => None,
        Some(k) if (0..=MAX_COMPLETION_LOGPROBS).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("`logprobs` must be between 0 and {MAX_COMPLETION_LOGPROBS}, got {k}"),
            ))
        }
    };
    let prompt_ids = match parse_prompt(&request.prompt)? {
        PromptInput::Ids(ids) => ids,
        PromptInput::Text(text) => {
            let engine = state.engine.clone();
            run_blocking(move || {
                engine
                    .tokenize(&text)
                    .map_err(|error| ApiError::internal(format!("tokenization failed: {error}")))
            })
            .await?
        }
    };
    check_context(
        prompt_ids.len(),
        params.max_tokens,
        state.engine.context_length(),
        "prompt",
    )?;
    let jobs = (0..params.n)
        .map(|index| Job {
            prompt_ids: prompt_ids.clone(),
            sampling: params.sampling_for_choice(index),
            max_tokens: params.max_tokens,
            stop: params.stop.clone(),
            chat: false,
            logprobs,
            keep_special_tokens: false,
        })
        .collect();
    let jobs = JobSet::submit(state.engine.as_ref(), jobs, &state.metrics, started)?;
    let meta = ResponseMeta::new("cmpl", &state.model_id);
    if params.stream {
        let stream = CompletionStream {
            text_offsets: vec![0; jobs.len()],
            jobs,
            meta,
            include_usage: params.include_usage,
            logprobs: logprobs.is_some(),
            ended: false,
            log: StreamLog::new(PATH, started),
        };
        let mut response = sse_response(stream, CompletionStream::step, state.keep_alive);
        response.extensions_mut().insert(StreamLogged);
        return Ok(response);
    }
    collect_answer(jobs, meta, logprobs.is_some()).await
}

fn parse_prompt(prompt: &Value) -> Result<PromptInput, ApiError> {
    const SHAPES: &str =
        "`prompt` must be a string, a list with one string, or a list of token ids";
    match prompt {
        Value::String(text) => Ok(PromptInput::Text(text.clone())),
        Value::Array(items) => match items.as_slice() {
            [] => Err(ApiError::invalid("prompt", "`prompt` must not be empty")),
            [Value::String(text)] => Ok(PromptInput::Text(text.clone())),
            [Value::Array(ids)] => parse_ids(ids),
            items if items.iter().all(Value::is_number) => parse_ids(items),
            items
                if items.len() > 1
                    && items.iter().all(|item| item.is_string() || item.is_array()) =>
            {
                Err(ApiError::invalid(
                    "prompt",
                    "several prompts in one request are not supported; send one request per prompt",
                ))
            }
            _ => Err(ApiError::invalid("prompt", SHAPES)),
        },
        _ => Err(ApiError::invalid("prompt", SHAPES)),
    }
}

fn parse_ids(items: &[Value]) -> Result<PromptInput, ApiError> {
    items
        .iter()
        .map(|item| {
            item.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "prompt",
                        format!("token ids must be integers ≥ 0, got {item}"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(PromptInput::Ids)
}

/// The legacy `logprobs` object for `steps`, whose text starts at char offset `*offset`
/// (advanced past them).
fn legacy_logprobs(steps: &[StepLogprobs], offset: &mut usize) -> Value {
    let mut tokens = Vec::with_capacity(steps.len());
    let mut token_logprobs = Vec::with_capacity(steps.len());
    let mut top_logprobs = Vec::with_capacity(steps.len());
    let mut text_offset = Vec::with_capacity(steps.len());
    for step in steps {
        tokens.push(json!(step.chosen.token));
        token_logprobs.push(json!(step.chosen.logprob));
        let mut top = Map::new();
        for alternative in &step.top {
            top.insert(alternative.token.clone(), json!(alternative.logprob));
        }
        top.entry(step.chosen.token.clone())
            .or_insert_with(|| json!(step.chosen.logprob));
        top_logprobs.push(Value::Object(top));
        text_offset.push(json!(*offset));
        *offset += step.chosen.token.chars().count();
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    })
}

async fn collect_answer(
    mut jobs: JobSet,
    meta: ResponseMeta,
    with_logprobs: bool,
) -> Result<Response, ApiError> {
    let count = jobs.len();
    let mut texts = vec![String::new(); count];
    let mut steps: Vec<Vec<StepLogprobs>> = vec![Vec::new(); count];
    let mut reasons = vec!["stop"; count];
    let mut usage = UsageTotals::default();
    while let Some((index, event)) = jobs.next_event().await {
        match event {
            JobEvent::Started => {}
            JobEvent::Delta { text, logprobs, .. } => {
                texts[index].push_str(&text);
                steps[index].extend(logprobs);
            }
            JobEvent::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                usage.add_choice(prompt_tokens, completion_tokens, cached_tokens);
                reasons[index] = finish_reason.as_str();
                jobs.finish_choice(index, finish_reason.as_str());
            }
            JobEvent::Error { message } => {
                jobs.finish_choice(index, "error");
                tracing::warn!(error = %message, "completion failed");
                return Err(ApiError::internal(message));
            }
        }
    }
    let choices: Vec<Value> = texts
        .into_iter()
        .zip(steps)
        .zip(reasons)
        .enumerate()
        .map(|(index, ((text, steps), reason))| {
            let logprobs = if with_logprobs {
                legacy_logprobs(&steps, &mut 0)
            } else {
                Value::Null
            };
            json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason})
        })
        .collect();
    Ok(meta.response("text_completion", choices, usage))
}

/// The state of one streamed completion.
struct CompletionStream {
    jobs: JobSet,
    meta: ResponseMeta,
    /// Per choice: chars of text sent so far (for `text_offset`).
    text_offsets: Vec<usize>,
    include_usage: bool,
    logprobs: bool,
    ended: bool,
    log: StreamLog,
}

impl CompletionStream {
    async fn step(mut self) -> Option<(Vec<Event>, Self)> {
        if self.ended {
            return None;
        }
        let events = match self.jobs.next_event().await {
            None => {
                self.ended = true;
                self.log.outcome = "done";
                let usage = self.include_usage.then(|| self.log.usage.to_json());
                closing_events(&self.meta, "text_completion", usage)
            }
            Some((_, JobEvent::Started)) => Vec::new(),
            Some((index, JobEvent::Delta { text, logprobs, .. })) => {
                let logprobs = (self.logprobs && !logprobs.is_empty())
                    .then(|| legacy_logprobs(&logprobs, &mut self.text_offsets[index]));
                if text.is_empty() && logprobs.is_none() {
                    Vec::new()
                } else {
                    vec![self.chunk(index, &text, logprobs, None)]
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
                self.jobs.finish_choice(index, finish_reason.as_str());
                vec![self.chunk(index, "", None, Some(finish_reason.as_str()))]
            }
            Some((index, JobEvent::Error { message })) => {
                self.jobs.finish_choice(index, "error");
                tracing::warn!(error = %message, "streamed completion failed");
                self.ended = true;
                self.log.outcome = "error";
                vec![stream_error_event(&message), done_event()]
            }
        };
        Some((events, self))
    }

    fn chunk(
        &self,
        index: usize,
        text: &str,
        logprobs: Option<Value>,
        finish_reason: Option<&str>,
    ) -> Event {
        let choice = json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason});
        self.meta
            .chunk_event("text_completion", choice, self.include_usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_shapes() {
        assert!(matches!(
            parse_prompt(&json!("hi")),
            Ok(PromptInput::Text(_))
        ));
        assert!(matches!(
            parse_prompt(&json!(["hi"])),
            Ok(PromptInput::Text(_))
        ));
        assert!(matches!(parse_prompt(&json!([1, 2])), Ok(PromptInput::Ids(ids)) if ids == [1, 2]));
        assert!(matches!(
            parse_prompt(&json!([[1, 2]])),
            Ok(PromptInput::Ids(_))
        ));
        for bad in [
            json!(["a", "b"]),
            json!([]),
            json!([-1]),
            json!(3),
            json!([[1], [2]]),
        ] {
            let error = parse_prompt(&bad).err().expect("invalid");
            assert_eq!(error.param.as_deref(), Some("prompt"), "{bad}");
        }
    }
}
