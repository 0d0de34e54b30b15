//! The batched decode step (the server's continuous batching): several sequences at different
//! positions decode in one forward pass, and each row's logits are what that sequence gets
//! alone, on every normal fixture and in the f32, bf16 and f16-safe plans.

mod common;

use common::{fixture_dir, load, max_abs_diff, to_f32, NORMAL_FIXTURES};
use qwen2_burn::core::observe::NoObserver;
use qwen2_burn::core::{LogitsFor, Policy};

/// Three prompts of different lengths from the fixture's prompt.
fn prompts(name: &str) -> Vec<Vec<u32>> {
    let facts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir(name).join("goldens.json")).unwrap(),
    )
    .unwrap();
    let ids = common::json_ids(&facts["prompt_ids"]);
    vec![ids[..3].to_vec(), ids[..11].to_vec(), ids[2..7].to_vec()]
}

/// The largest |Δlogit| allowed: `tol`, and in bf16 at least two units in the last place of
/// bf16 at the largest |logit| (as in tests/cpu_kernels.rs): lm_head's output is rounded to
/// bf16, and the batch's many-row products (the vdpbf16ps kernel where the CPU has it) sum in
/// another order than a lone row's one-row products, which can move a logit across a rounding.
fn allowed(policy: Policy, tol: f32, want: &[f32]) -> f32 {
    if policy != Policy::Bf16 {
        return tol;
    }
    let largest = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    tol.max(2.0 * 2f32.powi(largest.log2().floor() as i32 - 7))
}

#[test]
fn a_batched_decode_step_gives_each_row_its_own_logits() {
    for name in NORMAL_FIXTURES {
        for (policy, tol) in [
            (Policy::F32, 1e-4),
            (Policy::Bf16, 0.05),
            (Policy::F16Safe, 0.02),
        ] {
            let model = load(name, policy.plan());
            let prompts = prompts(name);
            let next = [5u32, 9, 2];
            // Alone: prefill, then one decode step, at batch 1.
            let alone: Vec<Vec<f32>> = prompts
                .iter()
                .zip(next)
                .map(|(p, id)| {
                    let mut cache = model.new_cache(64);
                    model.forward(p, &mut cache, LogitsFor::Last).unwrap();
                    to_f32(model.forward(&[id], &mut cache, LogitsFor::Last).unwrap())
                })
                .collect();
            // Together: the same prefills, then one batched step.
            let mut caches: Vec<_> = prompts
                .iter()
                .map(|p| {
                    let mut cache = model.new_cache(64);
                    model.forward(p, &mut cache, LogitsFor::Last).unwrap();
                    cache
                })
                .collect();
            let mut refs: Vec<_> = caches.iter_mut().collect();
            let logits = model
                .forward_decode(&next, &mut refs, &mut NoObserver)
                .unwrap();
            let all = to_f32(logits);
            let vocab = all.len() / 3;
            for (r, want) in alone.iter().enumerate() {
                let got = &all[r * vocab..(r + 1) * vocab];
                let (d, tol) = (max_abs_diff(got, want), allowed(policy, tol, want));
                assert!(d <= tol, "{name} {policy} row {r}: max |d| {d} > {tol}");
            }
            for (cache, p) in caches.iter().zip(&prompts) {
                assert_eq!(cache.len(), p.len() + 1, "each cache grew by one");
            }
            // A second batched step (rows at new positions) still matches going alone.
            let mut refs: Vec<_> = caches.iter_mut().collect();
            let again = to_f32(
                model
                    .forward_decode(&[1, 1, 1], &mut refs, &mut NoObserver)
                    .unwrap(),
            );
            for (r, (p, id)) in prompts.iter().zip(next).enumerate() {
                let mut cache = model.new_cache(64);
                model.forward(p, &mut cache, LogitsFor::Last).unwrap();
                model.forward(&[id], &mut cache, LogitsFor::Last).unwrap();
                let want = to_f32(model.forward(&[1], &mut cache, LogitsFor::Last).unwrap());
                let d = max_abs_diff(&again[r * vocab..(r + 1) * vocab], &want);
                let tol = allowed(policy, tol, &want);
                assert!(
                    d <= tol,
                    "{name} {policy} step 2 row {r}: max |d| {d} > {tol}"
                );
            }
        }
    }
}

#[test]
fn a_decode_step_checks_its_inputs() {
    let model = load("tied-f32-gqa", Policy::F32.plan());
    let mut a = model.new_cache(8);
    model.forward(&[1, 2], &mut a, LogitsFor::Last).unwrap();
    let mut refs = vec![&mut a];
    assert!(model
        .forward_decode(&[1, 2], &mut refs, &mut NoObserver)
        .is_err());
    let vocab = model.config().vocab_size as u32;
    assert!(model
        .forward_decode(&[vocab], &mut refs, &mut NoObserver)
        .is_err());
}
