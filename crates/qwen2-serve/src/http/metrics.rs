//! `/metrics`: Prometheus text exposition, hand-written, one registry per server (no global
//! recorder), plus the per-choice timing guard that feeds it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::engine_api::EngineStats;

/// Why a choice ended, as counted in `qwen2_request_finish_total{reason}`.
pub const FINISH_REASONS: [&str; 5] = ["stop", "length", "tool_calls", "error", "cancelled"];

const TTFT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5,
];
const E2E_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0,
];

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, seconds: f64) {
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug)]
struct MetricsInner {
    requests: BTreeMap<(String, u16), u64>,
    finishes: BTreeMap<&'static str, u64>,
    time_to_first_token: Histogram,
    inter_token_latency: Histogram,
    e2e_latency: Histogram,
}

/// The HTTP layer's counters and histograms.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<MetricsInner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty counters; every finish reason starts at 0 so it shows up.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(MetricsInner {
                requests: BTreeMap::new(),
                finishes: FINISH_REASONS.iter().map(|reason| (*reason, 0)).collect(),
                time_to_first_token: Histogram::new(TTFT_BUCKETS),
                inter_token_latency: Histogram::new(ITL_BUCKETS),
                e2e_latency: Histogram::new(E2E_BUCKETS),
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut MetricsInner) -> R) -> R {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut inner)
    }

    /// Counts a request answered on `endpoint` with `status`.
    pub fn count_request(&self, endpoint: &str, status: u16) {
        self.with(|inner| {
            *inner
                .requests
                .entry((endpoint.to_string(), status))
                .or_default() += 1
        });
    }

    /// Counts a choice that ended for `reason` (one of [`FINISH_REASONS`]).
    pub fn count_finish(&self, reason: &'static str) {
        self.with(|inner| *inner.finishes.entry(reason).or_default() += 1);
    }

    fn observe_first_token(&self, seconds: f64) {
        self.with(|inner| inner.time_to_first_token.observe(seconds));
    }

    fn observe_inter_token(&self, seconds: f64) {
        self.with(|inner| inner.inter_token_latency.observe(seconds));
    }

    fn observe_e2e(&self, seconds: f64) {
        self.with(|inner| inner.e2e_latency.observe(seconds));
    }

    /// The exposition text: this layer's metrics and the engine's `stats`.
    pub fn render(&self, stats: &EngineStats) -> String {
        let mut out = String::new();
        self.with(|inner| {
            let _ = writeln!(out, "# HELP qwen2_requests_total HTTP requests answered.");
            let _ = writeln!(out, "# TYPE qwen2_requests_total counter");
            for ((endpoint, status), count) in &inner.requests {
                let _ = writeln!(
                    out,
                    "qwen2_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {count}",
                    escape_label(endpoint)
                );
            }
            let _ = writeln!(
                out,
                "# HELP qwen2_request_finish_total Choices ended, by finish reason."
            );
            let _ = writeln!(out, "# TYPE qwen2_request_finish_total counter");
            for (reason, count) in &inner.finishes {
                let _ = writeln!(
                    out,
                    "qwen2_request_finish_total{{reason=\"{reason}\"}} {count}"
                );
            }
            inner.time_to_first_token.render(
                &mut out,
                "qwen2_time_to_first_token_seconds",
                "Time from request to the first generated text.",
            );
            inner.inter_token_latency.render(
                &mut out,
                "qwen2_inter_token_latency_seconds",
                "Time between two generated text deltas.",
            );
            inner.e2e_latency.render(
                &mut out,
                "qwen2_e2e_request_latency_seconds",
                "Time from request to the end of a choice.",
            );
        });
        let gauges = [
            (
                "qwen2_requests_waiting",
                "Jobs waiting to start.",
                stats.waiting as u64,
            ),
            (
                "qwen2_requests_running",
                "Jobs being prefilled or decoded.",
                stats.running as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let counters = [
            (
                "qwen2_prompt_tokens_total",
                "Prompt tokens prefilled.",
                stats.prompt_tokens_total,
            ),
            (
                "qwen2_cached_prompt_tokens_total",
                "Prompt tokens served from cached prefixes.",
                stats.cached_prompt_tokens_total,
            ),
            (
                "qwen2_generation_tokens_total",
                "Tokens generated.",
                stats.generated_tokens_total,
            ),
            (
                "qwen2_nonfinite_events_total",
                "Non-finite values seen.",
                stats.nonfinite_events_total,
            ),
            (
                "qwen2_fallbacks_total",
                "Jobs re-run under a safer precision plan.",
                stats.fallbacks_total,
            ),
            (
                "qwen2_decode_steps_total",
                "Batched decode steps.",
                stats.decode_steps_total,
            ),
            (
                "qwen2_decode_rows_total",
                "Rows decoded in batched decode steps.",
                stats.decode_rows_total,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Times one choice and counts how it ended; dropped before [`finish`](Self::finish) (the
/// client went away), it counts the choice as `cancelled`.
#[derive(Debug)]
pub struct ChoiceTimer {
    metrics: Arc<Metrics>,
    started: Instant,
    last_delta: Option<Instant>,
    finished: bool,
}

impl ChoiceTimer {
    /// Starts timing at `started` (when the request arrived).
    pub fn new(metrics: Arc<Metrics>, started: Instant) -> Self {
        Self {
            metrics,
            started,
            last_delta: None,
            finished: false,
        }
    }

    /// Records a text delta (time to first token, then inter-token latency).
    pub fn on_delta(&mut self) {
        let now = Instant::now();
        match self.last_delta {
            None => self
                .metrics
                .observe_first_token(now.duration_since(self.started).as_secs_f64()),
            Some(last) => self
                .metrics
                .observe_inter_token(now.duration_since(last).as_secs_f64()),
        }
        self.last_delta = Some(now);
    }

    /// Records the end of the choice for `reason` (one of [`FINISH_REASONS`]).
    pub fn finish(&mut self, reason: &'static str) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.metrics.count_finish(reason);
        if reason != "error" {
            self.metrics
                .observe_e2e(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for ChoiceTimer {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            self.metrics.count_finish("cancelled");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_cancellations() {
        let metrics = Arc::new(Metrics::new());
        metrics.count_request("/v1/chat/completions", 200);
        {
            let mut timer = ChoiceTimer::new(metrics.clone(), Instant::now());
            timer.on_delta();
            timer.on_delta();
            timer.finish("stop");
        }
        drop(ChoiceTimer::new(metrics.clone(), Instant::now()));
        let text = metrics.render(&EngineStats {
            waiting: 2,
            ..EngineStats::default()
        });
        assert!(text
            .contains("qwen2_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 1"));
        assert!(text.contains("qwen2_request_finish_total{reason=\"stop\"} 1"));
        assert!(text.contains("qwen2_request_finish_total{reason=\"cancelled\"} 1"));
        assert!(text.contains("qwen2_time_to_first_token_seconds_count 1"));
        assert!(text.contains("qwen2_inter_token_latency_seconds_count 1"));
        assert!(text.contains("qwen2_requests_waiting 2"));
    }
}
