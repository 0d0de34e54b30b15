//! Sampling maths against HF transformers' logits processors, and seeded reproducibility.

mod common;

use qwen2_burn::core::sampling::{
    apply_repetition_penalty, filtered_candidates, Sampler, SamplingParams,
};
use qwen2_burn::core::text::{GenerationConfig, SamplingOverrides};
use qwen2_burn::core::Error;

fn goldens() -> serde_json::Value {
    let path = common::fixture_dir("sampling-goldens.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn params(s: &serde_json::Value) -> SamplingParams {
    SamplingParams {
        temperature: s["temperature"].as_f64().unwrap() as f32,
        top_k: s["top_k"].as_u64().unwrap_or(0) as usize,
        top_p: s["top_p"].as_f64().unwrap_or(1.0) as f32,
        min_p: s["min_p"].as_f64().unwrap_or(0.0) as f32,
        repetition_penalty: s["repetition_penalty"].as_f64().unwrap_or(1.0) as f32,
        seed: 0,
    }
}

/// Probabilities over the whole vocabulary after penalty, temperature, top-k, top-p, min-p.
fn distribution(logits: &[f32], history: &[u32], p: &SamplingParams) -> Vec<f32> {
    let mut seen = vec![false; logits.len()];
    history.iter().for_each(|&i| seen[i as usize] = true);
    let mut l = logits.to_vec();
    apply_repetition_penalty(&mut l, &seen, p.repetition_penalty);
    let mut probs = vec![0.0; logits.len()];
    for (id, prob) in filtered_candidates(&l, p) {
        probs[id as usize] = prob;
    }
    probs
}

#[test]
fn temperature_top_k_top_p_min_p_and_penalty_match_hf() {
    let g = goldens();
    let logits = floats(&g["logits"]);
    let history: Vec<u32> = g["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    for case in g["cases"].as_array().unwrap() {
        let p = params(&case["settings"]);
        let want = floats(&case["probs"]);
        let got = distribution(&logits, &history, &p);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                *a == 0.0,
                *b == 0.0,
                "{:?}: token {i} kept differently",
                case["settings"]
            );
            assert!(
                (a - b).abs() < 2e-6,
                "{:?}: token {i}: {a} vs HF {b}",
                case["settings"]
            );
        }
    }
}

#[test]
fn top_k_keeps_ties_and_filters_combine() {
    let logits = [1.0, 3.0, 3.0, 2.0, 0.5];
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 2,
        ..SamplingParams::greedy()
    };
    let kept: Vec<u32> = filtered_candidates(&logits, &p)
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(kept, [1, 2]);
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 3,
        ..SamplingParams::greedy()
    };
    let kept: Vec<u32> = filtered_candidates(&logits, &p)
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(kept, [1, 2, 3]);
    // top_p that the most likely token alone exceeds keeps exactly one token.
    let p = SamplingParams {
        temperature: 1.0,
        top_p: 0.01,
        ..SamplingParams::greedy()
    };
    assert_eq!(filtered_candidates(&[5.0, 1.0, 0.0], &p), [(0, 1.0)]);
    // min_p 1.0 keeps only tokens as likely as the best.
    let p = SamplingParams {
        temperature: 1.0,
        min_p: 1.0,
        ..SamplingParams::greedy()
    };
    let kept: Vec<u32> = filtered_candidates(&logits, &p)
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(kept, [1, 2]);
}

#[test]
fn repetition_penalty_follows_hf_sign_rule() {
    let mut l = vec![2.0, -2.0, 2.0, -2.0];
    apply_repetition_penalty(&mut l, &[true, true, false, false], 2.0);
    assert_eq!(l, [1.0, -4.0, 2.0, -2.0]);
    // Greedy decoding with a penalty avoids the repeated token.
    let mut s = Sampler::new(
        SamplingParams {
            repetition_penalty: 3.0,
            ..SamplingParams::greedy()
        },
        &[0],
    )
    .unwrap();
    assert_eq!(s.sample(&mut [3.0, 2.0, 0.0], 0).unwrap(), 1);
}

#[test]
fn same_seed_same_tokens_and_frequencies_follow_the_distribution() {
    let logits: Vec<f32> = (0..16).map(|i| (i as f32 * 0.7).sin() * 2.0).collect();
    let p = SamplingParams {
        temperature: 0.8,
        top_k: 10,
        top_p: 0.9,
        seed: 42,
        ..SamplingParams::greedy()
    };
    let draw = |seed: u64, n: usize| {
        let mut s = Sampler::new(SamplingParams { seed, ..p }, &[]).unwrap();
        (0..n)
            .map(|i| s.sample(&mut logits.clone(), i).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(42, 64), draw(42, 64));
    assert_ne!(draw(42, 64), draw(43, 64));
    let n = 40_000;
    let mut counts = vec![0usize; logits.len()];
    draw(7, n)
        .into_iter()
        .for_each(|id| counts[id as usize] += 1);
    for (id, prob) in filtered_candidates(&logits, &p) {
        let freq = counts[id as usize] as f32 / n as f32;
        assert!(
            (freq - prob).abs() < 0.01,
            "token {id}: drawn {freq}, probability {prob}"
        );
    }
    let kept: Vec<u32> = filtered_candidates(&logits, &p)
        .iter()
        .map(|c| c.0)
        .collect();
    for (id, &c) in counts.iter().enumerate() {
        assert!(
            c == 0 || kept.contains(&(id as u32)),
            "filtered token {id} was drawn"
        );
    }
}

#[test]
fn bad_settings_and_nonfinite_logits_are_refused() {
    for bad in [
        SamplingParams {
            temperature: -1.0,
            ..SamplingParams::greedy()
        },
        SamplingParams {
            top_p: 0.0,
            ..SamplingParams::greedy()
        },
        SamplingParams {
            top_p: 1.5,
            ..SamplingParams::greedy()
        },
        SamplingParams {
            min_p: 2.0,
            ..SamplingParams::greedy()
        },
        SamplingParams {
            repetition_penalty: 0.0,
            ..SamplingParams::greedy()
        },
    ] {
        assert!(Sampler::new(bad, &[]).is_err(), "{bad:?}");
    }
    let mut s = Sampler::new(SamplingParams::temperature(1.0, 0), &[]).unwrap();
    let e = s
        .sample(&mut [0.0, f32::NAN, f32::INFINITY], 5)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::NonFiniteLogits {
                step: 5,
                nan: 1,
                inf: 1
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("step 5"), "{e}");
}

#[test]
fn generation_config_defaults_and_overrides() {
    let gc = GenerationConfig::from_model_dir(common::fixture_dir("tiny-chat")).unwrap();
    assert_eq!(gc.eos_token_id, Some(vec![2, 0]));
    let p = gc.sampling(&SamplingOverrides {
        seed: 9,
        ..Default::default()
    });
    assert_eq!(
        p,
        SamplingParams {
            temperature: 0.7,
            top_k: 20,
            top_p: 0.8,
            min_p: 0.0,
            repetition_penalty: 1.05,
            seed: 9
        }
    );
    let p = gc.sampling(&SamplingOverrides {
        temperature: Some(0.0),
        top_k: Some(5),
        ..Default::default()
    });
    assert!(p.is_greedy());
    assert_eq!((p.top_k, p.repetition_penalty), (5, 1.05));
    // A config without do_sample is greedy; a --temperature turns sampling on without HF's top_k 50.
    let plain = GenerationConfig::from_model_dir(common::fixture_dir("tied-f32-gqa")).unwrap();
    assert!(plain.sampling(&SamplingOverrides::default()).is_greedy());
    let p = plain.sampling(&SamplingOverrides {
        temperature: Some(0.9),
        ..Default::default()
    });
    assert_eq!((p.temperature, p.top_k, p.top_p), (0.9, 0, 1.0));
    // eos_token_id may be one id; unparsable files are named.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": 7, "do_sample": true}"#,
    )
    .unwrap();
    let gc = GenerationConfig::from_model_dir(dir.path()).unwrap();
    assert_eq!(
        (
            gc.eos_token_id.clone(),
            gc.sampling(&Default::default()).top_k
        ),
        (Some(vec![7]), 50)
    );
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"top_k": "many"}"#,
    )
    .unwrap();
    let e = GenerationConfig::from_model_dir(dir.path()).unwrap_err();
    assert!(e.to_string().contains("generation_config.json"), "{e}");
}
