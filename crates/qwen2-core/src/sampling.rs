//! Choosing the next token: repetition penalty, temperature, top-k, top-p, min-p, in the order
//! and with the semantics of HF transformers' logits processors, then a seeded draw.

use crate::error::{Error, Result};

/// How the next token is chosen. The defaults are greedy decoding with nothing filtered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (always the most likely token); > 0 divides the logits before softmax.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (ties at the boundary kept); 0 turns it off.
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to `top_p`; 1 turns it off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one; 0 turns it off.
    pub min_p: f32,
    /// HF's repetition penalty on every token already in the sequence (prompt included):
    /// positive logits are divided by it, negative ones multiplied. 1 turns it off.
    pub repetition_penalty: f32,
    /// Seed of the generator: the same seed and settings give the same tokens.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self::greedy()
    }
}

impl SamplingParams {
    /// Greedy decoding, no penalty.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }

    /// Plain softmax sampling at `temperature` with `seed`.
    pub fn temperature(temperature: f32, seed: u64) -> Self {
        SamplingParams {
            temperature,
            seed,
            ..Self::greedy()
        }
    }

    /// Whether tokens are picked by argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Rejects settings that mean nothing (negative temperature, top_p outside (0, 1], ...).
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: f32, want: &str| {
            Err(Error::Invalid(format!(
                "{field} must be {want}, got {value}"
            )))
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature", self.temperature, ">= 0 (0 = greedy)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "in [0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                self.repetition_penalty,
                "> 0 (1 = off)",
            );
        }
        Ok(())
    }
}

/// Picks tokens with [`SamplingParams`], remembering the sequence for the repetition penalty.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
    /// `seen[id]`: whether `id` occurs in the sequence so far.
    seen: Vec<bool>,
}

impl Sampler {
    /// A sampler for a sequence that starts with `history` (the prompt).
    pub fn new(params: SamplingParams, history: &[u32]) -> Result<Self> {
        params.validate()?;
        let mut s = Sampler {
            params,
            rng: SplitMix64(params.seed),
            seen: Vec::new(),
        };
        history.iter().for_each(|&id| s.observe(id));
        Ok(s)
    }

    /// The settings.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records that `id` is now part of the sequence.
    pub fn observe(&mut self, id: u32) {
        let i = id as usize;
        if i >= self.seen.len() {
            self.seen.resize(i + 1, false);
        }
        self.seen[i] = true;
    }

    /// Chooses the next token from f32 `logits` of generation step `step` (0 = after the
    /// prefill), and records it. Refuses logits holding NaN or inf.
    pub fn sample(&mut self, logits: &mut [f32], step: usize) -> Result<u32> {
        let (nan, inf) = logits.iter().fold((0, 0), |(n, i), x| {
            (n + x.is_nan() as usize, i + x.is_infinite() as usize)
        });
        if nan + inf > 0 {
            return Err(Error::NonFiniteLogits { step, nan, inf });
        }
        apply_repetition_penalty(logits, &self.seen, self.params.repetition_penalty);
        let id = if self.params.is_greedy() {
            argmax(logits)
        } else {
            let candidates = filtered_candidates(logits, &self.params);
            draw(&candidates, self.rng.next_f64())
        };
        self.observe(id);
        Ok(id)
    }
}

/// HF's `RepetitionPenaltyLogitsProcessor`: for every id with `seen[id]`, a positive logit is
/// divided by `penalty`, a negative one multiplied by it.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[bool], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    for (logit, _) in logits.iter_mut().zip(seen).filter(|(_, &s)| s) {
        *logit = if *logit < 0.0 {
            *logit * penalty
        } else {
            *logit / penalty
        };
    }
}

/// Temperature, then top-k, top-p and min-p as HF's warpers apply them, on logits that already
/// carry the repetition penalty. Returns the surviving `(id, probability)` pairs, most likely
/// first; the probabilities add up to 1.
pub fn filtered_candidates(logits: &[f32], params: &SamplingParams) -> Vec<(u32, f32)> {
    let t = params.temperature;
    let mut c: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, l / t))
        .collect();
    let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if params.top_k > 0 && params.top_k < c.len() {
        // Keep every token whose logit is >= the k-th largest (HF keeps ties at the boundary).
        c.select_nth_unstable_by(params.top_k - 1, by_logit_desc);
        let kth = c[params.top_k - 1].1;
        c.retain(|x| x.1 >= kth);
    }
    c.sort_unstable_by(by_logit_desc);
    to_probabilities(&mut c);
    if params.top_p < 1.0 {
        // HF: sort ascending, cumulative sum, drop tokens with cumsum <= 1 - top_p, keep the top.
        let mut cum = 0.0f32;
        let mut keep_from_end = c.len();
        for (i, x) in c.iter().enumerate().rev() {
            cum += x.1;
            if cum <= 1.0 - params.top_p {
                keep_from_end = i;
            } else {
                break;
            }
        }
        c.truncate(keep_from_end.max(1));
        renormalize(&mut c);
    }
    if params.min_p > 0.0 {
        let threshold = params.min_p * c[0].1;
        let keep = c.iter().take_while(|x| x.1 >= threshold).count().max(1);
        c.truncate(keep);
        renormalize(&mut c);
    }
    c
}

/// Softmax over the candidates' logits, in place (candidates sorted most likely first).
fn to_probabilities(c: &mut [(u32, f32)]) {
    let max = c.first().map_or(0.0, |x| x.1);
    let mut total = 0.0f32;
    for x in c.iter_mut() {
        x.1 = (x.1 - max).exp();
        total += x.1;
    }
    c.iter_mut().for_each(|x| x.1 /= total);
}

fn renormalize(c: &mut [(u32, f32)]) {
    let total: f32 = c.iter().map(|x| x.1).sum();
    c.iter_mut().for_each(|x| x.1 /= total);
}

/// Picks the candidate where the cumulative probability passes `u` in `[0, 1)`.
fn draw(candidates: &[(u32, f32)], u: f64) -> u32 {
    let total: f64 = candidates.iter().map(|x| x.1 as f64).sum();
    let mut target = u * total;
    for &(id, p) in candidates {
        if target < p as f64 {
            return id;
        }
        target -= p as f64;
    }
    candidates.last().map_or(0, |x| x.0)
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
