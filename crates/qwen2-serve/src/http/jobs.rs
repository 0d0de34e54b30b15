//! Running a request's jobs (one per choice): submission, merged event polling, usage totals,
//! response ids, and the SSE plumbing both completion endpoints share.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::error::ApiError;
use super::metrics::{ChoiceTimer, Metrics};
use crate::engine_api::{Engine, Job, JobEvent, JobHandle};

/// One choice's job and its timer.
struct RunningChoice {
    handle: JobHandle,
    timer: ChoiceTimer,
    done: bool,
}

/// The jobs of one request, polled together; dropping it cancels every unfinished job.
pub struct JobSet {
    choices: Vec<RunningChoice>,
    next_poll: usize,
}

impl JobSet {
    /// Submits one job per choice (all or nothing: a refused job drops, and so cancels, the
    /// ones already queued).
    pub fn submit(
        engine: &dyn Engine,
        jobs: Vec<Job>,
        metrics: &Arc<Metrics>,
        started: Instant,
    ) -> Result<Self, ApiError> {
        let mut choices = Vec::with_capacity(jobs.len());
        for job in jobs {
            let handle = engine.submit(job)?;
            choices.push(RunningChoice {
                handle,
                timer: ChoiceTimer::new(metrics.clone(), started),
                done: false,
            });
        }
        Ok(Self {
            choices,
            next_poll: 0,
        })
    }

    /// Choices in the set.
    pub fn len(&self) -> usize {
        self.choices.len()
    }

    /// Whether the set has no choices.
    pub fn is_empty(&self) -> bool {
        self.choices.is_empty()
    }

    /// The next event of any unfinished choice, with the choice's index; `None` once every
    /// choice has sent `Done` or `Error`. A job whose channel closes without either yields an
    /// `Error`. Deltas with tokens are timed here.
    pub async fn next_event(&mut self) -> Option<(usize, JobEvent)> {
        let event = poll_fn(|cx| {
            let count = self.choices.len();
            let mut all_done = true;
            for offset in 0..count {
                let index = (self.next_poll + offset) % count;
                let choice = &mut self.choices[index];
                if choice.done {
                    continue;
                }
                all_done = false;
                match choice.handle.events.poll_recv(cx) {
                    Poll::Ready(Some(event)) => {
                        if matches!(event, JobEvent::Done { .. } | JobEvent::Error { .. }) {
                            choice.done = true;
                        }
                        self.next_poll = (index + 1) % count;
                        return Poll::Ready(Some((index, event)));
                    }
                    Poll::Ready(None) => {
                        choice.done = true;
                        return Poll::Ready(Some((
                            index,
                            JobEvent::Error {
                                message: "the engine dropped the job without finishing it".into(),
                            },
                        )));
                    }
                    Poll::Pending => {}
                }
            }
            if all_done {
                Poll::Ready(None)
            } else {
                Poll::Pending
            }
        })
        .await;
        if let Some((index, JobEvent::Delta { ids, .. })) = &event {
            if !ids.is_empty() {
                self.choices[*index].timer.on_delta();
            }
        }
        event
    }

    /// Records how choice `index` ended (metrics).
    pub fn finish_choice(&mut self, index: usize, reason: &'static str) {
        if let Some(choice) = self.choices.get_mut(index) {
            choice.timer.finish(reason);
        }
    }
}

/// Token counts of a request, summed over its choices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    /// Prompt tokens (the prompt is shared: counted once).
    pub prompt_tokens: usize,
    /// Generated tokens over all choices.
    pub completion_tokens: usize,
    /// Prompt tokens served from a cached prefix.
    pub cached_tokens: usize,
}

impl UsageTotals {
    /// Adds one choice's `Done` counts.
    pub fn add_choice(&mut self, prompt_tokens: usize, completion_tokens: usize, cached: usize) {
        self.prompt_tokens = self.prompt_tokens.max(prompt_tokens);
        self.completion_tokens += completion_tokens;
        self.cached_tokens = self.cached_tokens.max(cached);
    }

    /// OpenAI's `usage` object.
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// Response id, creation time and model name shared by every chunk of one response.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    /// `chatcmpl-...` or `cmpl-...`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model id.
    pub model: String,
}

impl ResponseMeta {
    /// The whole (non-streamed) response of `object` (`chat.completion`, `text_completion`)
    /// with `choices` and `usage`; the usage rides along for the request log.
    pub fn response(&self, object: &str, choices: Vec<Value>, usage: UsageTotals) -> Response {
        let body = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage.to_json(),
            "system_fingerprint": null,
        });
        let mut response = axum::Json(body).into_response();
        response
            .extensions_mut()
            .insert(super::logging::LoggedUsage(usage));
        response
    }

    /// One stream chunk of `object` carrying one `choice`; with `include_usage` it has
    /// `"usage": null` (only the closing chunk carries usage).
    pub fn chunk_event(&self, object: &str, choice: Value, include_usage: bool) -> Event {
        let mut chunk = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [choice],
        });
        if let (true, Some(fields)) = (include_usage, chunk.as_object_mut()) {
            fields.insert("usage".into(), Value::Null);
        }
        json_event(&chunk)
    }

    /// A fresh id with `prefix`.
    pub fn new(prefix: &str, model: &str) -> Self {
        Self {
            id: new_id(prefix),
            created: unix_now(),
            model: model.to_string(),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// A unique id `PREFIX-<time><counter>` (hex), unique within this process and unlikely to
/// repeat across restarts.
pub fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0);
    format!("{prefix}-{nanos:x}{count:04x}")
}

/// An SSE `data:` event with a JSON body.
pub fn json_event(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

/// The events that close a stream of `object` chunks: with `include_usage`, a chunk with no
/// choices carrying `usage`; then `data: [DONE]`.
pub fn closing_events(meta: &ResponseMeta, object: &str, usage: Option<Value>) -> Vec<Event> {
    let mut events = Vec::new();
    if let Some(usage) = usage {
        events.push(json_event(&serde_json::json!({
            "id": meta.id,
            "object": object,
            "created": meta.created,
            "model": meta.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage,
        })));
    }
    events.push(done_event());
    events
}

/// The closing `data: [DONE]` event.
pub fn done_event() -> Event {
    Event::default().data("[DONE]")
}

/// The event sent when a job fails mid-stream.
pub fn stream_error_event(message: &str) -> Event {
    json_event(&ApiError::internal(message).body())
}

/// Streams the events `step` produces as SSE (keep-alive comments every `keep_alive`) until it
/// returns `None`; the state is dropped (cancelling its jobs) when the client goes away.
pub fn sse_response<S, F, Fut>(state: S, step: F, keep_alive: Duration) -> Response
where
    S: Send + 'static,
    F: FnMut(S) -> Fut + Send + 'static,
    Fut: Future<Output = Option<(Vec<Event>, S)>> + Send + 'static,
{
    let stream = futures_util::stream::unfold(state, step)
        .flat_map(|events| futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>)));
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
        .into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-cache"),
    );
    response
}

/// Renders (chat) or takes (completions) the prompt and tokenizes it on a blocking thread:
/// long prompts take milliseconds to tokenize.
pub async fn run_blocking<T, F>(work: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::internal(format!("tokenization task failed: {error}")))?
}
