//! What the server does to a row of logits besides the core sampler: OpenAI's frequency and
//! presence penalties and logit bias, and the log-probabilities it reports.

use std::collections::HashMap;

use qwen2_core::text::TextTokenizer;

use crate::engine_api::{SamplingSettings, StepLogprobs, TokenLogprob};

/// OpenAI's penalties over the tokens generated so far and the request's logit bias, applied
/// in place: `logit[t] -= frequency × count[t] + presence × (count[t] > 0)`, then `+= bias[t]`.
pub fn apply_openai_adjustments(
    logits: &mut [f32],
    settings: &SamplingSettings,
    generated_counts: &HashMap<u32, u32>,
) {
    let (freq, pres) = (settings.frequency_penalty, settings.presence_penalty);
    if freq != 0.0 || pres != 0.0 {
        for (&id, &count) in generated_counts {
            if let Some(l) = logits.get_mut(id as usize) {
                *l -= freq * count as f32 + if count > 0 { pres } else { 0.0 };
            }
        }
    }
    for &(id, bias) in &settings.logit_bias {
        if let Some(l) = logits.get_mut(id as usize) {
            *l += bias;
        }
    }
}

/// Natural-log softmax of the raw logits (f64 accumulation).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_sum = sum.ln() as f32;
    logits.iter().map(|&l| l - max - log_sum).collect()
}

/// One token's text and bytes as the logprobs report shows them.
pub fn token_entry(tokenizer: &TextTokenizer, id: u32, logprob: f32) -> TokenLogprob {
    let token = tokenizer.decode(&[id], false).unwrap_or_default();
    TokenLogprob {
        bytes: token.as_bytes().to_vec(),
        token,
        logprob,
    }
}

/// The chosen token's log-probability and the `k` most likely tokens, from the raw logits.
pub fn step_logprobs(
    tokenizer: &TextTokenizer,
    raw_logits: &[f32],
    chosen: u32,
    k: usize,
) -> StepLogprobs {
    let lp = log_softmax(raw_logits);
    let mut order: Vec<u32> = (0..lp.len() as u32).collect();
    let k = k.min(order.len());
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| lp[b as usize].total_cmp(&lp[a as usize]));
        order.truncate(k);
        order.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]));
    } else {
        order.clear();
    }
    StepLogprobs {
        chosen: token_entry(tokenizer, chosen, lp[chosen as usize]),
        top: order
            .into_iter()
            .map(|id| token_entry(tokenizer, id, lp[id as usize]))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_and_bias_follow_openai() {
        let mut logits = vec![1.0f32, 2.0, 3.0];
        let settings = SamplingSettings {
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            logit_bias: vec![(0, 10.0)],
            ..Default::default()
        };
        let counts = HashMap::from([(1u32, 2u32), (2, 0)]);
        apply_openai_adjustments(&mut logits, &settings, &counts);
        assert_eq!(logits, vec![11.0, 2.0 - 1.0 - 0.25, 3.0]);
    }

    #[test]
    fn log_softmax_sums_to_one() {
        let lp = log_softmax(&[0.5, -1.0, 3.0, 2.0]);
        let total: f64 = lp.iter().map(|&l| f64::from(l).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(lp[2] > lp[3] && lp[3] > lp[0]);
    }
}
