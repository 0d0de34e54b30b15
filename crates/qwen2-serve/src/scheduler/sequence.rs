//! One running request: its ids, KV cache, sampler, text stream and stop rules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use burn::prelude::Backend;
use qwen2_core::sampling::Sampler;
use qwen2_core::text::{TextStream, TextTokenizer};
use qwen2_core::KvCache;

use super::logits::{apply_openai_adjustments, step_logprobs};
use crate::engine_api::{FinishReason, Job, JobEvent};

/// Where a sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `ids[next..]` still has to be fed (the prompt, or after a fallback everything so far).
    Prefill { next: usize },
    /// The last id is sampled and waits to be fed by the next batched step.
    Decode,
}

/// What the last logits row did to the sequence.
#[derive(Debug)]
pub enum RowOutcome {
    /// A token was emitted; the sequence goes on.
    Continue,
    /// The sequence ended (its `Done` waits in [`Sequence::take_end`]).
    Finished,
    /// The logits held NaN or inf: nothing was emitted.
    NonFinite,
    /// Something else failed (its `Error` is sent).
    Failed,
}

/// A request being prefilled or decoded.
pub struct Sequence<'t, B: Backend> {
    pub events: tokio::sync::mpsc::UnboundedSender<JobEvent>,
    pub cancelled: Arc<AtomicBool>,
    /// Prompt, then every emitted token.
    pub ids: Vec<u32>,
    pub prompt_len: usize,
    /// Index into the plan chain (0 = the resolved plan, then the safer ones).
    pub plan: usize,
    pub cache: KvCache<B>,
    pub phase: Phase,
    /// Prompt positions reused from a cached prefix.
    pub cached_tokens: usize,
    pub job: Job,
    sampler: Sampler,
    stream: TextStream<'t>,
    tokenizer: &'t TextTokenizer,
    eos: Vec<u32>,
    max_tokens: usize,
    context: usize,
    generated: usize,
    counts: HashMap<u32, u32>,
    started: bool,
    /// The `Done` event of a finished sequence, sent by the worker once the sequence has left
    /// the running set (so a client that sees it also sees the engine's gauges without it).
    end: Option<JobEvent>,
}

impl<'t, B: Backend> Sequence<'t, B> {
    /// A sequence for `job` with `cache` already holding `reused` positions of its prompt.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job: Job,
        events: tokio::sync::mpsc::UnboundedSender<JobEvent>,
        cancelled: Arc<AtomicBool>,
        sampler: Sampler,
        eos: Vec<u32>,
        max_tokens: usize,
        context: usize,
        tokenizer: &'t TextTokenizer,
        (cache, reused, plan): (KvCache<B>, usize, usize),
    ) -> Self {
        let stream = TextStream::new(tokenizer, !job.keep_special_tokens, &job.stop);
        Self {
            ids: job.prompt_ids.clone(),
            prompt_len: job.prompt_ids.len(),
            plan,
            cache,
            phase: Phase::Prefill { next: reused },
            cached_tokens: reused,
            job,
            events,
            cancelled,
            sampler,
            stream,
            tokenizer,
            eos,
            max_tokens,
            context,
            generated: 0,
            counts: HashMap::new(),
            started: false,
            end: None,
        }
    }

    /// The finished sequence's `Done` event with the channel it goes to.
    pub fn take_end(&mut self) -> Option<(tokio::sync::mpsc::UnboundedSender<JobEvent>, JobEvent)> {
        self.end.take().map(|e| (self.events.clone(), e))
    }

    /// Whether the client went away.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst) || self.events.is_closed()
    }

    /// The id the next decode step feeds.
    pub fn last_id(&self) -> u32 {
        self.ids.last().copied().unwrap_or(0)
    }

    /// Generated tokens so far.
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Ends the job with an error.
    pub fn fail(&self, message: impl Into<String>) {
        let _ = self.events.send(JobEvent::Error {
            message: message.into(),
        });
    }

    /// Samples from `raw` (this sequence's f32 logits row), emits the token's text and
    /// log-probabilities, and decides whether the sequence goes on.
    pub fn on_logits(&mut self, raw: &[f32]) -> RowOutcome {
        if raw.iter().any(|x| !x.is_finite()) {
            return RowOutcome::NonFinite;
        }
        if !self.started {
            self.started = true;
            let _ = self.events.send(JobEvent::Started);
        }
        let mut logits = raw.to_vec();
        apply_openai_adjustments(&mut logits, &self.job.sampling, &self.counts);
        let id = match self.sampler.sample(&mut logits, self.generated) {
            Ok(id) => id,
            Err(e) => {
                self.fail(e.to_string());
                return RowOutcome::Failed;
            }
        };
        let logprobs = self
            .job
            .logprobs
            .map(|k| vec![step_logprobs(self.tokenizer, raw, id, k)])
            .unwrap_or_default();
        self.generated += 1;
        *self.counts.entry(id).or_default() += 1;
        self.ids.push(id);
        if self.eos.contains(&id) {
            let rest = self.stream.finish().unwrap_or_default();
            self.delta(rest, vec![id], logprobs);
            return self.done(FinishReason::Stop);
        }
        let step = match self.stream.push(id) {
            Ok(step) => step,
            Err(e) => {
                self.fail(e.to_string());
                return RowOutcome::Failed;
            }
        };
        if step.stopped {
            self.delta(step.text, vec![id], logprobs);
            return self.done(FinishReason::Stop);
        }
        // The next step would feed this id at position ids.len() - 1.
        if self.generated >= self.max_tokens || self.ids.len() > self.context {
            let text = step.text + &self.stream.finish().unwrap_or_default();
            self.delta(text, vec![id], logprobs);
            return self.done(FinishReason::Length);
        }
        self.delta(step.text, vec![id], logprobs);
        self.phase = Phase::Decode;
        RowOutcome::Continue
    }

    fn delta(&self, text: String, ids: Vec<u32>, logprobs: Vec<crate::engine_api::StepLogprobs>) {
        let _ = self.events.send(JobEvent::Delta {
            text,
            ids,
            logprobs,
        });
    }

    fn done(&mut self, finish_reason: FinishReason) -> RowOutcome {
        self.end = Some(JobEvent::Done {
            finish_reason,
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated,
            cached_tokens: self.cached_tokens,
        });
        RowOutcome::Finished
    }
}
