//! Token generation with a KV cache: one prefill over the prompt, then one decode step per token.

use std::time::{Duration, Instant};

use burn::prelude::Backend;
use burn::tensor::FloatDType;

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::{LogitsFor, Qwen2Model};
use crate::monitor::{locate_nonfinite, MonitorMode, StabilityMonitor};
use crate::observe::NoObserver;
use crate::sampling::{Sampler, SamplingParams};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Token selection.
    pub sampling: SamplingParams,
    /// Generation stops after emitting any of these ids.
    pub eos_token_ids: Vec<u32>,
    /// Stability checks on every forward pass (`None`: only the sampler's non-finite check).
    /// Whenever a non-finite value shows up, the sequence is re-run with a full monitor to name
    /// the first op that overflowed.
    pub monitor: Option<MonitorMode>,
    /// Prompt positions fed per forward pass (`None` or 0: the whole prompt at once). Chunks
    /// bound the attention's memory, and let `prefill_progress` report on long prompts.
    pub prefill_chunk: Option<usize>,
    /// Called with (positions prefilled, positions to prefill): (0, n) when the prefill starts,
    /// after each chunk, and (n, n) once the first token is chosen.
    pub prefill_progress: Option<ProgressFn>,
}

/// The prefill chunk of [`GenerateOptions::greedy`] and of the CLI and server.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// A progress callback `(done, total)`.
#[derive(Clone)]
pub struct ProgressFn(pub std::sync::Arc<dyn Fn(usize, usize) + Send + Sync>);

impl std::fmt::Debug for ProgressFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressFn")
    }
}

impl GenerateOptions {
    /// Greedy decoding of up to `max_new_tokens`, no eos, the cheap monitor on, the prompt
    /// prefilled in chunks of [`DEFAULT_PREFILL_CHUNK`].
    pub fn greedy(max_new_tokens: usize) -> Self {
        GenerateOptions {
            max_new_tokens,
            sampling: SamplingParams::greedy(),
            eos_token_ids: Vec::new(),
            monitor: Some(MonitorMode::Cheap),
            prefill_chunk: Some(DEFAULT_PREFILL_CHUNK),
            prefill_progress: None,
        }
    }
}

/// The outcome of a generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids only (the prompt is not repeated), including a final eos id if one was hit.
    pub ids: Vec<u32>,
    /// Number of prompt tokens.
    pub prompt_tokens: usize,
    /// Wall time of the prefill (prompt forward pass and first token).
    pub prefill_time: Duration,
    /// Wall time of all decode steps.
    pub decode_time: Duration,
    /// Whether generation ended on an eos id.
    pub stopped_on_eos: bool,
    /// Whether the caller ended generation (a stop string, for instance).
    pub stopped_by_caller: bool,
}

impl Generation {
    /// Decode steps run (generated tokens after the first one).
    pub fn decode_steps(&self) -> usize {
        self.ids.len().saturating_sub(1)
    }

    /// Why generation stopped, in OpenAI's words: `stop` (an eos id or the caller, e.g. a stop
    /// string) or `length` (the token budget or the context).
    pub fn finish_reason(&self) -> &'static str {
        if self.stopped_on_eos || self.stopped_by_caller {
            "stop"
        } else {
            "length"
        }
    }

    /// Decode speed in tokens per second; `None` when no decode step ran (a rate over nothing
    /// would be noise).
    pub fn decode_tokens_per_s(&self) -> Option<f64> {
        rate(self.decode_steps(), self.decode_time)
    }

    /// Prefill speed in prompt tokens per second; `None` when nothing was prefilled.
    pub fn prefill_tokens_per_s(&self) -> Option<f64> {
        rate(self.prompt_tokens, self.prefill_time)
    }
}

/// `count / time`, or `None` when either is zero.
fn rate(count: usize, time: std::time::Duration) -> Option<f64> {
    let secs = time.as_secs_f64();
    (count > 0 && secs > 0.0).then(|| count as f64 / secs)
}

/// What the token callback of [`generate_in_cache`] wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Generate the next token.
    Continue,
    /// End generation now (the token just handed over is kept).
    Stop,
}

/// Generates up to `opts.max_new_tokens` tokens after `prompt`, calling `on_token` with each id as
/// soon as it is chosen.
pub fn generate<B: Backend>(
    model: &Qwen2Model<B>,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Result<Generation> {
    let needed = prompt.len() + opts.max_new_tokens.saturating_sub(1);
    if needed > model.context_length() {
        return Err(Error::ContextOverflow {
            requested: prompt.len() + opts.max_new_tokens,
            capacity: model.context_length(),
            limit: "the model's context length (prompt + max new tokens)".into(),
        });
    }
    let mut cache = model.new_cache(needed.max(prompt.len()));
    generate_in_cache(model, &mut cache, &[], prompt, opts, |id| {
        on_token(id);
        Ok(Flow::Continue)
    })
}

/// Continues a sequence whose first `history.len()` ids are already in `cache`: feeds `input`
/// (at least one id), then generates up to `opts.max_new_tokens` tokens, calling `on_token`
/// with each id as soon as it is chosen. The cache grows as needed, up to the context length.
/// On return the cache holds `history`, `input` and every generated id but the last.
pub fn generate_in_cache<B: Backend>(
    model: &Qwen2Model<B>,
    cache: &mut KvCache<B>,
    history: &[u32],
    input: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> Result<Flow>,
) -> Result<Generation> {
    if cache.len() != history.len() {
        return Err(Error::Invalid(format!(
            "the KV cache holds {} positions but the history has {} ids",
            cache.len(),
            history.len()
        )));
    }
    let vocab = model.config().vocab_size;
    if let Some(&id) = opts.eos_token_ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::Invalid(format!(
            "end-of-sequence id {id} is outside the vocabulary ({vocab} ids)"
        )));
    }
    let context = model.context_length();
    if history.len() + input.len() > context {
        return Err(Error::ContextOverflow {
            requested: history.len() + input.len(),
            capacity: context,
            limit: "the model's context length".into(),
        });
    }
    let mut sequence: Vec<u32> = history.iter().chain(input).copied().collect();
    let mut sampler = Sampler::new(opts.sampling, &sequence)?;
    let mut ids = Vec::with_capacity(opts.max_new_tokens);
    let (mut stopped_on_eos, mut stopped_by_caller) = (false, false);
    let start = Instant::now();
    let mut prefill_time = Duration::ZERO;
    let mut feed: Vec<u32> = input.to_vec();
    let mut monitor = opts.monitor.map(StabilityMonitor::<B>::new);
    for step in 0..opts.max_new_tokens {
        if step == 0 {
            prefill_ahead(model, cache, &mut feed, opts, monitor.as_mut())?;
        }
        if cache.len() + feed.len() > context {
            tracing::info!(context, "context full: generation ends");
            break;
        }
        cache.reserve(cache.len() + feed.len(), context);
        let logits = match monitor.as_mut() {
            Some(m) => model.forward_observed(&feed, cache, LogitsFor::Last, m)?,
            None => model.forward_observed(&feed, cache, LogitsFor::Last, &mut NoObserver)?,
        };
        let mut logits = logits
            .cast(FloatDType::F32)
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| Error::Invalid(format!("reading logits: {e:?}")))?;
        let monitor_saw_nonfinite = monitor.as_mut().is_some_and(|m| {
            let bad = m.first_nonfinite().is_some();
            m.clear();
            bad
        });
        let picked = if monitor_saw_nonfinite {
            Err(Error::NonFiniteLogits {
                step,
                nan: 0,
                inf: 0,
            })
        } else {
            sampler.sample(&mut logits, step)
        };
        let next = match picked {
            Ok(id) => id,
            Err(e @ Error::NonFiniteLogits { .. }) => {
                return Err(locate_nonfinite(model, &sequence, step)?.unwrap_or(e));
            }
            Err(e) => return Err(e),
        };
        if step == 0 {
            prefill_time = start.elapsed();
            if let Some(p) = &opts.prefill_progress {
                (p.0)(input.len(), input.len());
            }
        }
        ids.push(next);
        sequence.push(next);
        let flow = on_token(next)?;
        if opts.eos_token_ids.contains(&next) {
            stopped_on_eos = true;
            break;
        }
        if flow == Flow::Stop {
            stopped_by_caller = true;
            break;
        }
        feed = vec![next];
    }
    let decode_time = start.elapsed().saturating_sub(prefill_time);
    tracing::debug!(
        generated = ids.len(),
        ?prefill_time,
        ?decode_time,
        "generation done"
    );
    Ok(Generation {
        ids,
        prompt_tokens: input.len(),
        prefill_time,
        decode_time,
        stopped_on_eos,
        stopped_by_caller,
    })
}

/// Feeds all but the last chunk of `feed` (the whole prompt at step 0) in chunks of
/// `opts.prefill_chunk`, reporting progress; the step that samples the first token feeds the
/// rest. A non-finite value in a chunk stays in the monitor and the KV cache, so that step
/// sees it and names the op.
fn prefill_ahead<B: Backend>(
    model: &Qwen2Model<B>,
    cache: &mut KvCache<B>,
    feed: &mut Vec<u32>,
    opts: &GenerateOptions,
    mut monitor: Option<&mut StabilityMonitor<B>>,
) -> Result<()> {
    let (total, context) = (feed.len(), model.context_length());
    if let Some(p) = &opts.prefill_progress {
        (p.0)(0, total);
    }
    let Some(chunk) = opts.prefill_chunk.filter(|&c| c > 0) else {
        return Ok(());
    };
    let mut done = 0;
    while feed.len() > chunk {
        let part: Vec<u32> = feed.drain(..chunk).collect();
        cache.reserve(cache.len() + part.len(), context);
        match monitor.as_deref_mut() {
            Some(m) => model.forward_observed(&part, cache, LogitsFor::Last, m)?,
            None => model.forward_observed(&part, cache, LogitsFor::Last, &mut NoObserver)?,
        };
        done += part.len();
        if let Some(p) = &opts.prefill_progress {
            (p.0)(done, total);
        }
    }
    Ok(())
}
