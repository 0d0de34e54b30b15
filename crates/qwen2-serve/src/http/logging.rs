//! One `tracing` line and one `qwen2_requests_total` count per request.
//!
//! Plain responses are logged by [`observe_requests`] when they are sent; streamed ones carry
//! a [`StreamLogged`] marker and are logged by their [`StreamLog`] when the stream ends (or
//! the client goes away), so the line can hold the token counts.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::jobs::UsageTotals;
use super::AppState;

/// Response extension: the token counts of a plain (not streamed) completion.
#[derive(Debug, Clone, Copy)]
pub struct LoggedUsage(pub UsageTotals);

/// Response extension: this streamed response logs itself when it ends.
#[derive(Debug, Clone, Copy)]
pub struct StreamLogged;

/// Middleware: counts the request in the metrics and logs it (unless it is streamed).
pub async fn observe_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.metrics.count_request(&endpoint, status);
    if response.extensions().get::<StreamLogged>().is_none() {
        let usage = response
            .extensions()
            .get::<LoggedUsage>()
            .map(|logged| logged.0)
            .unwrap_or_default();
        tracing::info!(
            %method,
            path,
            status,
            duration_ms = started.elapsed().as_millis() as u64,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            "request"
        );
    }
    response
}

/// Logs a streamed request when dropped (end of stream or client gone).
#[derive(Debug)]
pub struct StreamLog {
    path: &'static str,
    started: Instant,
    /// Token counts so far.
    pub usage: UsageTotals,
    /// How the stream ended (`"done"`, `"error"`; `"disconnected"` while unset).
    pub outcome: &'static str,
}

impl StreamLog {
    /// Starts the log of a stream on `path` that began at `started`.
    pub fn new(path: &'static str, started: Instant) -> Self {
        Self {
            path,
            started,
            usage: UsageTotals::default(),
            outcome: "disconnected",
        }
    }
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        tracing::info!(
            method = "POST",
            path = self.path,
            status = 200u16,
            duration_ms = self.started.elapsed().as_millis() as u64,
            prompt_tokens = self.usage.prompt_tokens,
            completion_tokens = self.usage.completion_tokens,
            stream = self.outcome,
            "request"
        );
    }
}
