//! The engine behind the server: one scheduler thread owns the model, admits queued jobs up to
//! `max_seqs`, prefills them in chunks and decodes every running sequence in one batched step
//! per tick ([`qwen2_core::Qwen2Model::forward_decode`]).

mod logits;
mod prefix;
mod sequence;
mod worker;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use qwen2_core::engine::{ModelLoader, TextAssets};
use qwen2_core::text::{ChatTemplate, TextTokenizer};
use qwen2_core::Platform;

use crate::engine_api::{
    Engine, EngineStats, Job, JobEvent, JobHandle, SubmitError, TemplateMessage,
};

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Sequences decoded together at most (`--max-seqs`).
    pub max_seqs: usize,
    /// Jobs waiting beyond the running ones at most (`--max-queue`); more → 503.
    pub max_queue: usize,
    /// Prompt + completion positions allowed (`--max-model-len`); `None`: the model's context.
    pub max_model_len: Option<usize>,
    /// Prompt tokens prefilled per tick (one sequence at a time), so a long prompt delays the
    /// running streams by one chunk at a time, not by its whole prefill.
    pub prefill_chunk: usize,
    /// Finished sequences' KV caches kept for prefix reuse.
    pub idle_caches: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_seqs: 8,
            max_queue: 64,
            max_model_len: None,
            prefill_chunk: 128,
            idle_caches: 8,
        }
    }
}

/// A job on its way to the scheduler.
pub(crate) struct Submission {
    pub job: Job,
    pub events: tokio::sync::mpsc::UnboundedSender<JobEvent>,
    pub cancelled: Arc<AtomicBool>,
}

/// What handlers and the scheduler thread share.
pub(crate) struct Shared {
    pub queue: Mutex<VecDeque<Submission>>,
    pub wake: Condvar,
    pub stats: Mutex<EngineStats>,
    pub ready: AtomicBool,
    /// Set by `shutdown`: no new jobs; running ones end at the deadline.
    pub stop_at: Mutex<Option<Instant>>,
    pub stopped: (Mutex<bool>, Condvar),
    /// Why the model could not be loaded, if it could not.
    pub load_error: Mutex<Option<String>>,
}

impl Shared {
    pub fn stats(&self, f: impl FnOnce(&mut EngineStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(&mut s);
        }
    }

    pub fn stop_deadline(&self) -> Option<Instant> {
        self.stop_at.lock().ok().and_then(|d| *d)
    }
}

/// The model engine: the [`Engine`] the HTTP layer talks to.
pub struct ModelEngine {
    model_id: String,
    context: usize,
    tokenizer: Arc<TextTokenizer>,
    template: Arc<ChatTemplate>,
    options: EngineOptions,
    shared: Arc<Shared>,
}

impl ModelEngine {
    /// Starts the scheduler thread, which loads the model under the loader's first plan (the
    /// engine is not [`Engine::ready`] until it has) and then serves jobs.
    pub fn start<P: Platform + 'static>(
        loader: ModelLoader<P>,
        assets: TextAssets,
        options: EngineOptions,
    ) -> qwen2_core::Result<Arc<Self>>
    where
        ModelLoader<P>: Send,
    {
        let dir = loader.spec().dir.clone();
        let config = qwen2_core::Qwen2Config::from_model(&dir)?;
        let mut context = qwen2_core::model::context_length(&config);
        if let Some(n) = loader.spec().ctx_size {
            context = context.min(n);
        }
        if let Some(n) = options.max_model_len {
            if n == 0 || n > context {
                return Err(qwen2_core::Error::Invalid(format!(
                    "--max-model-len {n} must be between 1 and the model's context length {context}"
                )));
            }
            context = n;
        }
        let model_id = dir
            .canonicalize()
            .unwrap_or(dir.clone())
            .file_name()
            .map_or("qwen2".into(), |n| {
                let n = n.to_string_lossy();
                n.strip_suffix(".gguf").unwrap_or(&n).to_string()
            });
        let TextAssets {
            tokenizer,
            template,
            generation,
            config_eos,
        } = assets;
        let tokenizer = Arc::new(tokenizer);
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            stats: Mutex::new(EngineStats::default()),
            ready: AtomicBool::new(false),
            stop_at: Mutex::new(None),
            stopped: (Mutex::new(false), Condvar::new()),
            load_error: Mutex::new(None),
        });
        let settings = worker::WorkerSettings {
            options: options.clone(),
            context,
            generation,
            eos: config_eos,
        };
        let (thread_shared, thread_tokenizer) = (shared.clone(), tokenizer.clone());
        std::thread::Builder::new()
            .name("qwen2-scheduler".into())
            .spawn(move || {
                let shared = thread_shared.clone();
                qwen2_core::engine::on_compute_pool(move || {
                    worker::run(loader, thread_tokenizer, settings, shared)
                });
                if let Ok(mut done) = thread_shared.stopped.0.lock() {
                    *done = true;
                }
                thread_shared.stopped.1.notify_all();
            })
            .map_err(|e| qwen2_core::Error::Invalid(format!("cannot start the scheduler: {e}")))?;
        Ok(Arc::new(Self {
            model_id,
            context,
            tokenizer,
            template: Arc::new(template),
            options,
            shared,
        }))
    }

    /// Blocks until the model is loaded; the loading error if it could not be.
    pub fn wait_ready(&self) -> Result<(), String> {
        loop {
            if self.ready() {
                return Ok(());
            }
            if self.shared.stopped.0.lock().map(|d| *d).unwrap_or(true) {
                return Err(self
                    .shared
                    .load_error
                    .lock()
                    .ok()
                    .and_then(|e| e.clone())
                    .unwrap_or_else(|| "the scheduler stopped".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Engine for ModelEngine {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn context_length(&self) -> usize {
        self.context
    }

    fn ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    fn tokenize(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer.encode(text).map_err(|e| e.to_string())
    }

    fn detokenize(&self, ids: &[u32], skip_special: bool) -> Result<String, String> {
        self.tokenizer
            .check_ids(ids)
            .and_then(|()| self.tokenizer.decode(ids, skip_special))
            .map_err(|e| e.to_string())
    }

    fn render_chat(
        &self,
        messages: &[TemplateMessage],
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String, String> {
        self.template
            .render_values(messages, tools)
            .map_err(|e| e.to_string())
    }

    fn submit(&self, job: Job) -> Result<JobHandle, SubmitError> {
        if job.prompt_ids.is_empty() {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        if job.prompt_ids.len() >= self.context {
            return Err(SubmitError::Invalid(format!(
                "the prompt has {} tokens; the context holds {} positions",
                job.prompt_ids.len(),
                self.context
            )));
        }
        self.tokenizer
            .check_ids(&job.prompt_ids)
            .map_err(|e| SubmitError::Invalid(e.to_string()))?;
        if self.shared.stop_deadline().is_some() {
            return Err(SubmitError::ShuttingDown);
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let cancelled = Arc::new(AtomicBool::new(false));
        {
            let mut queue = self
                .shared
                .queue
                .lock()
                .map_err(|_| SubmitError::ShuttingDown)?;
            if queue.len() >= self.options.max_queue {
                return Err(SubmitError::QueueFull {
                    waiting: queue.len(),
                });
            }
            queue.push_back(Submission {
                job,
                events: tx,
                cancelled: cancelled.clone(),
            });
        }
        self.shared.wake.notify_all();
        Ok(JobHandle {
            events: rx,
            cancelled,
        })
    }

    fn stats(&self) -> EngineStats {
        let mut s = self
            .shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        s.waiting = self.shared.queue.lock().map_or(0, |q| q.len());
        s
    }

    fn shutdown(&self, grace: Duration) {
        if let Ok(mut at) = self.shared.stop_at.lock() {
            at.get_or_insert(Instant::now() + grace);
        }
        self.shared.wake.notify_all();
        let (lock, cv) = &self.shared.stopped;
        let Ok(mut done) = lock.lock() else { return };
        while !*done {
            match cv.wait_timeout(done, Duration::from_millis(100)) {
                Ok((d, _)) => done = d,
                Err(_) => return,
            }
        }
    }
}
