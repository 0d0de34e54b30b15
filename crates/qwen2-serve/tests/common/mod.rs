//! A scripted mock [`Engine`] and a real loopback server for the HTTP tests.
//!
//! The mock tokenizer maps each char to one id (its code point); the chat "template" is
//! ChatML-like. Each job replies with `MockScript::reply` one char per token (a non-ASCII char
//! arrives as an empty delta plus the char, to exercise empty deltas), honoring max_tokens and
//! stop strings, with optional delays, a mid-stream error and a bounded number of running jobs.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qwen2_serve::engine_api::{
    Engine, EngineStats, FinishReason, Job, JobEvent, JobHandle, StepLogprobs, SubmitError,
    TemplateMessage, TokenLogprob,
};
use qwen2_serve::http::{serve_listener, ServerConfig};
use serde_json::Value;

/// What the mock's jobs do.
#[derive(Debug, Clone)]
pub struct MockScript {
    /// The answer, one char per token.
    pub reply: String,
    /// Wait before `Started` (a long prefill).
    pub prefill_delay: Duration,
    /// Wait before each token.
    pub token_delay: Duration,
    /// Send `Error` after this many tokens.
    pub error_after: Option<usize>,
    /// Jobs running at once; more → `QueueFull`.
    pub capacity: usize,
    /// Cached prompt tokens reported in `Done`.
    pub cached_tokens: usize,
}

impl Default for MockScript {
    fn default() -> Self {
        Self {
            reply: "Hello, wörld! The answer is 42.".into(),
            prefill_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            error_after: None,
            capacity: 64,
            cached_tokens: 0,
        }
    }
}

/// A submitted job and its cancellation flag, as the mock saw them.
#[derive(Debug, Clone)]
pub struct SeenJob {
    pub job: Job,
    pub cancelled: Arc<AtomicBool>,
}

/// A conversation the mock rendered: its messages and tools.
pub type RenderedChat = (Vec<TemplateMessage>, Option<Vec<Value>>);

/// The mock engine.
pub struct MockEngine {
    pub script: Mutex<MockScript>,
    pub context_length: usize,
    pub ready: AtomicBool,
    pub jobs: Mutex<Vec<SeenJob>>,
    pub rendered: Mutex<Vec<RenderedChat>>,
    pub running: Arc<AtomicUsize>,
    pub generated: Arc<AtomicU64>,
    pub shutting_down: AtomicBool,
    pub shutdown_calls: AtomicUsize,
}

impl MockEngine {
    pub fn new(script: MockScript) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script),
            context_length: 1024,
            ready: AtomicBool::new(true),
            jobs: Mutex::new(Vec::new()),
            rendered: Mutex::new(Vec::new()),
            running: Arc::new(AtomicUsize::new(0)),
            generated: Arc::new(AtomicU64::new(0)),
            shutting_down: AtomicBool::new(false),
            shutdown_calls: AtomicUsize::new(0),
        })
    }

    pub fn seen_jobs(&self) -> Vec<SeenJob> {
        self.jobs.lock().unwrap().clone()
    }
}

fn token_logprob(text: &str, logprob: f32) -> TokenLogprob {
    TokenLogprob {
        token: text.to_string(),
        bytes: text.as_bytes().to_vec(),
        logprob,
    }
}

fn step_logprobs(text: &str, k: usize) -> StepLogprobs {
    let mut top = vec![token_logprob(text, -0.25)];
    top.extend(
        (0..k.saturating_sub(1)).map(|i| token_logprob(&format!("alt{i}"), -2.0 - i as f32)),
    );
    StepLogprobs {
        chosen: token_logprob(text, -0.25),
        top: top.into_iter().take(k).collect(),
    }
}

/// The text the mock generates for `job`, cut at max_tokens and stop strings, and why it ends.
fn planned_reply(reply: &str, job: &Job) -> (Vec<char>, FinishReason) {
    let mut text = reply.to_string();
    let mut reason = FinishReason::Stop;
    if let Some(cut) = job
        .stop
        .iter()
        .filter_map(|stop| text.find(stop.as_str()))
        .min()
    {
        text.truncate(cut);
    }
    let mut chars: Vec<char> = text.chars().collect();
    let budget = job.max_tokens.unwrap_or(usize::MAX);
    // Each non-ASCII char costs two tokens.
    let mut used = 0;
    let mut kept = 0;
    for c in &chars {
        let cost = if c.is_ascii() { 1 } else { 2 };
        if used + cost > budget {
            reason = FinishReason::Length;
            break;
        }
        used += cost;
        kept += 1;
    }
    chars.truncate(kept);
    (chars, reason)
}

impl Engine for MockEngine {
    fn model_id(&self) -> &str {
        "mock-qwen"
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>, String> {
        Ok(text.chars().map(|c| c as u32).collect())
    }

    fn detokenize(&self, ids: &[u32], _skip_special: bool) -> Result<String, String> {
        ids.iter()
            .map(|&id| char::from_u32(id).ok_or_else(|| format!("unknown token id {id}")))
            .collect()
    }

    fn render_chat(
        &self,
        messages: &[TemplateMessage],
        tools: Option<&[Value]>,
    ) -> Result<String, String> {
        self.rendered
            .lock()
            .unwrap()
            .push((messages.to_vec(), tools.map(<[Value]>::to_vec)));
        let mut out = String::new();
        if let Some(tools) = tools {
            out.push_str("<|im_start|>system\n<tools>");
            for tool in tools {
                out.push_str(&tool.to_string());
            }
            out.push_str("</tools><|im_end|>\n");
        }
        for message in messages {
            let role = message["role"].as_str().unwrap_or("?");
            let content = message["content"].as_str().unwrap_or("");
            out.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
        }
        out.push_str("<|im_start|>assistant\n");
        Ok(out)
    }

    fn submit(&self, job: Job) -> Result<JobHandle, SubmitError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let script = self.script.lock().unwrap().clone();
        let running = self.running.load(Ordering::SeqCst);
        if running >= script.capacity {
            return Err(SubmitError::QueueFull { waiting: running });
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        self.jobs.lock().unwrap().push(SeenJob {
            job: job.clone(),
            cancelled: cancelled.clone(),
        });
        let flag = cancelled.clone();
        let running = self.running.clone();
        let generated = self.generated.clone();
        std::thread::spawn(move || {
            run_job(job, script, sender, &flag, &generated);
            running.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(JobHandle {
            events: receiver,
            cancelled,
        })
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            running: self.running.load(Ordering::SeqCst),
            generated_tokens_total: self.generated.load(Ordering::SeqCst),
            decode_steps_total: 7,
            ..EngineStats::default()
        }
    }

    fn shutdown(&self, _grace: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown_calls.fetch_add(1, Ordering::SeqCst);
    }
}

/// Sleeps `total` in small steps; false if the job was cancelled meanwhile.
fn wait_unless_cancelled(total: Duration, cancelled: &AtomicBool) -> bool {
    let end = Instant::now() + total;
    while Instant::now() < end {
        if cancelled.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5).min(end - Instant::now()));
    }
    !cancelled.load(Ordering::SeqCst)
}

fn run_job(
    job: Job,
    script: MockScript,
    events: tokio::sync::mpsc::UnboundedSender<JobEvent>,
    cancelled: &AtomicBool,
    generated: &AtomicU64,
) {
    if !wait_unless_cancelled(script.prefill_delay, cancelled) {
        return;
    }
    let _ = events.send(JobEvent::Started);
    let (chars, reason) = planned_reply(&script.reply, &job);
    let mut tokens = 0;
    for (position, c) in chars.iter().enumerate() {
        if script.error_after == Some(position) {
            let _ = events.send(JobEvent::Error {
                message: "non-finite logits under every plan".into(),
            });
            return;
        }
        if !wait_unless_cancelled(script.token_delay, cancelled) {
            return;
        }
        let text = c.to_string();
        if !c.is_ascii() {
            let _ = events.send(JobEvent::Delta {
                text: String::new(),
                ids: vec![1],
                logprobs: job
                    .logprobs
                    .map(|k| vec![step_logprobs("", k)])
                    .unwrap_or_default(),
            });
            tokens += 1;
        }
        let sent = events.send(JobEvent::Delta {
            text: text.clone(),
            ids: vec![*c as u32],
            logprobs: job
                .logprobs
                .map(|k| vec![step_logprobs(&text, k)])
                .unwrap_or_default(),
        });
        tokens += 1;
        generated.fetch_add(1, Ordering::SeqCst);
        if sent.is_err() {
            return;
        }
    }
    let _ = events.send(JobEvent::Done {
        finish_reason: reason,
        prompt_tokens: job.prompt_ids.len(),
        completion_tokens: tokens,
        cached_tokens: script.cached_tokens,
    });
}

/// A server on a loopback port, shut down when dropped.
pub struct TestServer {
    pub base: String,
    pub address: SocketAddr,
    pub engine: Arc<MockEngine>,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<(), qwen2_serve::http::ServeError>>>,
}

impl TestServer {
    pub async fn start(script: MockScript, config: ServerConfig) -> Self {
        Self::start_with(MockEngine::new(script), config).await
    }

    pub async fn start_default() -> Self {
        Self::start(MockScript::default(), ServerConfig::default()).await
    }

    pub async fn start_with(engine: Arc<MockEngine>, config: ServerConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let dyn_engine: Arc<dyn Engine> = engine.clone();
        let task = tokio::spawn(serve_listener(listener, dyn_engine, config, async move {
            let _ = signal.await;
        }));
        Self {
            base: format!("http://{address}"),
            address,
            engine,
            client: reqwest::Client::new(),
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON; returns status, headers and the parsed body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, value)
    }

    /// POSTs JSON expecting an SSE stream; returns the raw body.
    pub async fn post_stream(&self, path: &str, body: &Value) -> (u16, String) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Asks the server to stop and waits for `serve_listener` to return.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("server stops in time")
                .expect("server task");
            result.expect("serve returns Ok");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// The `data:` payloads of an SSE body, in order (comments skipped).
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .flat_map(|event| event.lines())
        .filter_map(|line| line.strip_prefix("data: ").map(str::to_string))
        .collect()
}

/// The JSON chunks of an SSE body (all `data:` but `[DONE]`), and whether it ended with `[DONE]`.
pub fn sse_chunks(body: &str) -> (Vec<Value>, bool) {
    let data = sse_data(body);
    let done = data.last().map(String::as_str) == Some("[DONE]");
    let chunks = data
        .iter()
        .filter(|payload| payload.as_str() != "[DONE]")
        .map(|payload| serde_json::from_str(payload).expect("chunk is JSON"))
        .collect();
    (chunks, done)
}

/// Asserts the OpenAI error shape and returns the error object.
pub fn assert_error_shape(body: &Value) -> &serde_json::Map<String, Value> {
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {body}"));
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.contains_key("param"), "{body}");
    assert!(error.contains_key("code"), "{body}");
    error
}
