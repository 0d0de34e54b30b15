//! The scheduler thread: admit, prefill one chunk, decode every running row in one batched
//! step, repeat.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::prelude::Backend;
use burn::tensor::FloatDType;
use qwen2_core::engine::{self, GenerationRequest, ModelLoader};
use qwen2_core::observe::NoObserver;
use qwen2_core::sampling::Sampler;
use qwen2_core::text::{GenerationConfig, TextTokenizer};
use qwen2_core::{LogitsFor, Platform, Qwen2Model};

use super::prefix::PrefixPool;
use super::sequence::{Phase, RowOutcome, Sequence};
use super::{EngineOptions, Shared, Submission};
use crate::engine_api::JobEvent;

/// What the worker needs besides the loader.
pub struct WorkerSettings {
    pub options: EngineOptions,
    /// Positions a sequence may use.
    pub context: usize,
    pub generation: GenerationConfig,
    /// config.json's eos ids (when generation_config.json names none).
    pub eos: Vec<u32>,
}

/// The models of the plan chain, loaded when first needed.
struct Models<P: Platform> {
    loader: ModelLoader<P>,
    chain: Vec<qwen2_core::Policy>,
    loaded: Vec<Option<Qwen2Model<P::B>>>,
}

impl<P: Platform> Models<P> {
    fn get(&mut self, plan: usize) -> qwen2_core::Result<&Qwen2Model<P::B>> {
        if self.loaded[plan].is_none() {
            let policy = self.chain[plan];
            tracing::info!(%policy, "loading the model for this plan");
            self.loaded[plan] = Some(self.loader.load(policy, &mut |_, _| {})?);
        }
        self.loaded[plan]
            .as_ref()
            .ok_or_else(|| qwen2_core::Error::Invalid("model not loaded".into()))
    }
}

/// Runs the scheduler until shutdown.
pub fn run<P: Platform>(
    loader: ModelLoader<P>,
    tokenizer: Arc<TextTokenizer>,
    settings: WorkerSettings,
    shared: Arc<Shared>,
) {
    let chain = loader.chain();
    let mut models = Models {
        loaded: (0..chain.len()).map(|_| None).collect(),
        chain,
        loader,
    };
    if let Err(e) = models.get(0) {
        tracing::error!(error = %e, "cannot load the model");
        if let Ok(mut s) = shared.load_error.lock() {
            *s = Some(e.to_string());
        }
        return;
    }
    shared.ready.store(true, Ordering::SeqCst);
    tracing::info!(plan = %models.chain[0], "model loaded; serving");
    let tokenizer: &TextTokenizer = &tokenizer;
    let chat_eos = engine::chat_end_ids(tokenizer);
    let mut running: Vec<Sequence<'_, P::B>> = Vec::new();
    let mut pool: PrefixPool<P::B> = PrefixPool::new(settings.options.idle_caches);
    loop {
        if let Some(deadline) = shared.stop_deadline() {
            drain_queue(&shared, "the server is shutting down");
            if running.is_empty() || Instant::now() >= deadline {
                for s in running.drain(..) {
                    s.fail("the server is shutting down");
                }
                break;
            }
        }
        running.retain(|s| {
            let gone = s.is_cancelled();
            if gone {
                tracing::info!(
                    generated = s.generated(),
                    "client went away: sequence cancelled"
                );
            }
            !gone
        });
        admit(
            &shared,
            &settings,
            &chat_eos,
            tokenizer,
            &mut models,
            &mut pool,
            &mut running,
        );
        if running.is_empty() {
            wait_for_work(&shared);
            continue;
        }
        let mut finished = Vec::new();
        prefill_one_chunk(&shared, &settings, &mut models, &mut running, &mut finished);
        decode_step(&shared, &mut models, &mut running, &mut finished);
        finished.sort_unstable();
        finished.dedup();
        let mut ends = Vec::new();
        for i in finished.into_iter().rev() {
            let mut s = running.remove(i);
            ends.extend(s.take_end());
            pool.put(s.plan, s.ids, s.cache);
        }
        // Rows that overflowed move to the next plan and prefill again.
        for s in running
            .iter_mut()
            .filter(|s| s.phase == Phase::Prefill { next: usize::MAX })
        {
            fall_back(&shared, &mut models, &mut pool, s);
        }
        shared.stats(|st| st.running = running.len());
        for (events, end) in ends {
            let _ = events.send(end);
        }
    }
    shared.stats(|st| st.running = 0);
}

/// Ends every queued job with `message`.
fn drain_queue(shared: &Shared, message: &str) {
    let drained: Vec<Submission> = shared
        .queue
        .lock()
        .map(|mut q| q.drain(..).collect())
        .unwrap_or_default();
    for s in drained {
        let _ = s.events.send(JobEvent::Error {
            message: message.into(),
        });
    }
}

fn wait_for_work(shared: &Shared) {
    if let Ok(q) = shared.queue.lock() {
        if q.is_empty() && shared.stop_deadline().is_none() {
            let _ = shared.wake.wait_timeout(q, Duration::from_millis(200));
        }
    }
}

/// Moves queued jobs into `running` while there is room.
#[allow(clippy::too_many_arguments)]
fn admit<'t, P: Platform>(
    shared: &Shared,
    settings: &WorkerSettings,
    chat_eos: &[u32],
    tokenizer: &'t TextTokenizer,
    models: &mut Models<P>,
    pool: &mut PrefixPool<P::B>,
    running: &mut Vec<Sequence<'t, P::B>>,
) {
    while running.len() < settings.options.max_seqs && shared.stop_deadline().is_none() {
        let Some(sub) = shared.queue.lock().ok().and_then(|mut q| q.pop_front()) else {
            return;
        };
        if sub.cancelled.load(Ordering::SeqCst) || sub.events.is_closed() {
            continue;
        }
        let job = &sub.job;
        let s = &job.sampling;
        let request = GenerationRequest {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repetition_penalty: s.repetition_penalty,
            seed: s.seed,
            max_new_tokens: job.max_tokens,
            eos: None,
        };
        let extra: &[u32] = if job.chat { chat_eos } else { &[] };
        let opts = match engine::generate_options(
            &settings.generation,
            &settings.eos,
            &request,
            extra,
            settings.context,
        ) {
            Ok(o) => o,
            Err(e) => {
                let _ = sub.events.send(JobEvent::Error {
                    message: e.to_string(),
                });
                continue;
            }
        };
        let sampler = match Sampler::new(opts.sampling, &job.prompt_ids) {
            Ok(s) => s,
            Err(e) => {
                let _ = sub.events.send(JobEvent::Error {
                    message: e.to_string(),
                });
                continue;
            }
        };
        let (cache, reused) = match pool.take(0, &job.prompt_ids) {
            Some(hit) => hit,
            None => match models.get(0) {
                Ok(m) => (m.new_cache(job.prompt_ids.len() + 16), 0),
                Err(e) => {
                    let _ = sub.events.send(JobEvent::Error {
                        message: e.to_string(),
                    });
                    continue;
                }
            },
        };
        shared.stats(|st| st.cached_prompt_tokens_total += reused as u64);
        let max_tokens = opts
            .max_new_tokens
            .min(settings.context + 1 - job.prompt_ids.len());
        running.push(Sequence::new(
            sub.job,
            sub.events,
            sub.cancelled,
            sampler,
            opts.eos_token_ids,
            max_tokens,
            settings.context,
            tokenizer,
            (cache, reused, 0),
        ));
    }
}

/// Feeds the next prompt chunk of the first sequence still prefilling; on its last chunk the
/// sequence samples its first token.
fn prefill_one_chunk<P: Platform>(
    shared: &Shared,
    settings: &WorkerSettings,
    models: &mut Models<P>,
    running: &mut [Sequence<'_, P::B>],
    finished: &mut Vec<usize>,
) {
    let Some(i) = running
        .iter()
        .position(|s| matches!(s.phase, Phase::Prefill { next } if next != usize::MAX))
    else {
        return;
    };
    let s = &mut running[i];
    let Phase::Prefill { next } = s.phase else {
        return;
    };
    let end = (next + settings.options.prefill_chunk.max(1)).min(s.ids.len());
    let result = models.get(s.plan).and_then(|model| {
        s.cache.reserve(end, model.context_length());
        model.forward(&s.ids[next..end], &mut s.cache, LogitsFor::Last)
    });
    shared.stats(|st| st.prompt_tokens_total += (end - next) as u64);
    // Only the prompt's last chunk has logits anyone reads.
    let last = end == s.ids.len();
    match result.and_then(|l| {
        if last {
            to_rows(l, 1).map(Some)
        } else {
            Ok(None)
        }
    }) {
        Ok(Some(logits)) => on_row(shared, s, &logits[0], i, finished),
        Ok(None) => s.phase = Phase::Prefill { next: end },
        Err(e) => {
            s.fail(e.to_string());
            finished.push(i);
        }
    }
}

/// One batched decode step per plan over every sequence that waits to feed its last token.
fn decode_step<P: Platform>(
    shared: &Shared,
    models: &mut Models<P>,
    running: &mut [Sequence<'_, P::B>],
    finished: &mut Vec<usize>,
) {
    for plan in 0..models.chain.len() {
        let rows: Vec<usize> = (0..running.len())
            .filter(|&i| running[i].plan == plan && running[i].phase == Phase::Decode)
            .filter(|i| !finished.contains(i))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let ids: Vec<u32> = rows.iter().map(|&i| running[i].last_id()).collect();
        let result = models.get(plan).and_then(|model| {
            let mut caches: Vec<&mut qwen2_core::KvCache<P::B>> = running
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| rows.contains(i))
                .map(|(_, s)| &mut s.cache)
                .collect();
            model.forward_decode(&ids, &mut caches, &mut NoObserver)
        });
        shared.stats(|st| {
            st.decode_steps_total += 1;
            st.decode_rows_total += rows.len() as u64;
        });
        match result.and_then(|l| to_rows(l, rows.len())) {
            Ok(logits) => {
                for (row, &i) in logits.iter().zip(&rows) {
                    on_row(shared, &mut running[i], row, i, finished);
                }
            }
            Err(e) => {
                for &i in &rows {
                    running[i].fail(e.to_string());
                    finished.push(i);
                }
            }
        }
    }
}

/// Hands one logits row to its sequence.
fn on_row<B: Backend>(
    shared: &Shared,
    s: &mut Sequence<'_, B>,
    row: &[f32],
    i: usize,
    finished: &mut Vec<usize>,
) {
    match s.on_logits(row) {
        RowOutcome::Continue => shared.stats(|st| st.generated_tokens_total += 1),
        RowOutcome::Finished => {
            shared.stats(|st| st.generated_tokens_total += 1);
            finished.push(i);
        }
        RowOutcome::Failed => finished.push(i),
        RowOutcome::NonFinite => {
            shared.stats(|st| st.nonfinite_events_total += 1);
            // Marked for fall_back once this tick's steps are done.
            s.phase = Phase::Prefill { next: usize::MAX };
        }
    }
}

/// Moves a sequence whose logits overflowed to the next plan of the chain, to prefill
/// everything it has so far again there (nothing from the bad row was emitted); with no plan
/// left, it ends with an error.
fn fall_back<P: Platform>(
    shared: &Shared,
    models: &mut Models<P>,
    pool: &mut PrefixPool<P::B>,
    s: &mut Sequence<'_, P::B>,
) {
    let next = s.plan + 1;
    let from = models.chain[s.plan];
    if next >= models.chain.len() {
        s.fail(format!(
            "non-finite logits under the {from} plan and no safer plan is left; nothing was \
             sampled from them"
        ));
        s.phase = Phase::Decode;
        s.cancelled.store(true, Ordering::SeqCst);
        return;
    }
    let to = models.chain[next];
    tracing::warn!(%from, %to, "non-finite logits in one row: it continues under a safer plan");
    let cache = match pool.take(next, &s.ids) {
        Some((cache, reused)) => {
            s.phase = Phase::Prefill { next: reused };
            cache
        }
        None => match models.get(next) {
            Ok(m) => {
                s.phase = Phase::Prefill { next: 0 };
                m.new_cache(s.ids.len() + 16)
            }
            Err(e) => {
                s.fail(format!(
                    "non-finite logits under {from}, and loading {to} failed: {e}"
                ));
                s.phase = Phase::Decode;
                s.cancelled.store(true, Ordering::SeqCst);
                return;
            }
        },
    };
    s.cache = cache;
    s.plan = next;
    shared.stats(|st| st.fallbacks_total += 1);
}

/// `[rows, vocab]` logits → one f32 vector per row.
fn to_rows<B: Backend>(
    logits: burn::prelude::Tensor<B, 2>,
    rows: usize,
) -> qwen2_core::Result<Vec<Vec<f32>>> {
    let values = logits
        .cast(FloatDType::F32)
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| qwen2_core::Error::Invalid(format!("reading logits: {e:?}")))?;
    let vocab = values.len() / rows.max(1);
    Ok(values.chunks(vocab.max(1)).map(<[f32]>::to_vec).collect())
}
