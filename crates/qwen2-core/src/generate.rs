//! Token generation with a KV cache: one prefill over the prompt, then one decode step per token.

use std::time::{Duration, Instant};

use burn::prelude::Backend;
use burn::tensor::FloatDType;

use crate::error::{Error, Result};
use crate::model::{LogitsFor, Qwen2Model};
use crate::monitor::{locate_nonfinite, MonitorMode, StabilityMonitor};
use crate::observe::NoObserver;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Always the highest logit (ties go to the lowest id).
    Greedy,
    /// Softmax(logits / temperature), drawn with a seeded generator.
    Temperature {
        /// Divides the logits; > 0.
        temperature: f32,
        /// Seed of the generator: the same seed gives the same tokens.
        seed: u64,
    },
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Token selection.
    pub sampling: Sampling,
    /// Generation stops after emitting any of these ids.
    pub eos_token_ids: Vec<u32>,
    /// Stability checks on every forward pass (`None`: only the sampler's non-finite check).
    /// Whenever a non-finite value shows up, the sequence is re-run with a full monitor to name
    /// the first op that overflowed.
    pub monitor: Option<MonitorMode>,
}

impl GenerateOptions {
    /// Greedy decoding of up to `max_new_tokens`, no eos, the cheap monitor on.
    pub fn greedy(max_new_tokens: usize) -> Self {
        GenerateOptions {
            max_new_tokens,
            sampling: Sampling::Greedy,
            eos_token_ids: Vec::new(),
            monitor: Some(MonitorMode::Cheap),
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
}

impl Generation {
    /// Decode steps run (generated tokens after the first one).
    pub fn decode_steps(&self) -> usize {
        self.ids.len().saturating_sub(1)
    }

    /// Decode speed in tokens per second (0 when no decode step ran).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let secs = self.decode_time.as_secs_f64();
        if self.decode_steps() == 0 || secs == 0.0 {
            0.0
        } else {
            self.decode_steps() as f64 / secs
        }
    }

    /// Prefill speed in prompt tokens per second.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_time.as_secs_f64().max(1e-9)
    }
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
    let mut rng = match opts.sampling {
        Sampling::Temperature { seed, .. } => SplitMix64(seed),
        Sampling::Greedy => SplitMix64(0),
    };
    let mut ids = Vec::with_capacity(opts.max_new_tokens);
    let mut stopped_on_eos = false;
    let start = Instant::now();
    let mut prefill_time = Duration::ZERO;
    let mut input: Vec<u32> = prompt.to_vec();
    let mut monitor = opts.monitor.map(StabilityMonitor::<B>::new);
    for step in 0..opts.max_new_tokens {
        let logits = match monitor.as_mut() {
            Some(m) => model.forward_observed(&input, &mut cache, LogitsFor::Last, m)?,
            None => model.forward_observed(&input, &mut cache, LogitsFor::Last, &mut NoObserver)?,
        };
        let logits = logits
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
            pick(&logits, opts.sampling, &mut rng, step)
        };
        let next = match picked {
            Ok(id) => id,
            Err(e @ Error::NonFiniteLogits { .. }) => {
                let seen: Vec<u32> = prompt.iter().chain(&ids).copied().collect();
                return Err(locate_nonfinite(model, &seen, step)?.unwrap_or(e));
            }
            Err(e) => return Err(e),
        };
        if step == 0 {
            prefill_time = start.elapsed();
        }
        ids.push(next);
        on_token(next);
        if opts.eos_token_ids.contains(&next) {
            stopped_on_eos = true;
            break;
        }
        input = vec![next];
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
        prompt_tokens: prompt.len(),
        prefill_time,
        decode_time,
        stopped_on_eos,
    })
}

/// Chooses a token from f32 logits; refuses non-finite logits.
pub fn pick(logits: &[f32], sampling: Sampling, rng: &mut SplitMix64, step: usize) -> Result<u32> {
    let (nan, inf) = logits.iter().fold((0, 0), |(n, i), x| {
        (n + x.is_nan() as usize, i + x.is_infinite() as usize)
    });
    if nan + inf > 0 {
        return Err(Error::NonFiniteLogits { step, nan, inf });
    }
    Ok(match sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::Temperature { temperature, .. } => {
            if temperature.is_nan() || temperature <= 0.0 {
                return Err(Error::Invalid(format!(
                    "temperature must be > 0, got {temperature}"
                )));
            }
            let max = logits[argmax(logits) as usize];
            let weights: Vec<f64> = logits
                .iter()
                .map(|&l| (((l - max) / temperature) as f64).exp())
                .collect();
            let total: f64 = weights.iter().sum();
            let mut target = rng.next_f64() * total;
            let mut chosen = weights.len() - 1;
            for (i, w) in weights.iter().enumerate() {
                if target < *w {
                    chosen = i;
                    break;
                }
                target -= w;
            }
            chosen as u32
        }
    })
}

/// Index of the largest value; the first one on ties.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// A small, seedable generator (SplitMix64): deterministic across platforms.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
