//! Precision policies on the CPU backend: each plan computes in the dtypes it names, overflows
//! where HF's f16 overflows, and its logits stay within the error HF's own half-precision runs show.
//!
//! Tolerances (max |Δlogits| against HF's f32 goldens):
//! - bf16: at most 1.1 × the error of HF's own bf16 run on the same fixture;
//! - f16-safe: at most the error of HF's own f16 run (it must beat the naive plan HF runs),
//!   and on massive-1e5, where HF f16 is NaN, at most HF's bf16 error;
//! - f16 (naive): finite and within 2 × HF's f16 error where HF's f16 is finite. With f16 scores
//!   and an f16 residual stream this plan amplifies f32 summation order: on yarn-f32 summing
//!   `probs @ v` sequentially gives 1.02 × HF's error, in eight lanes (the blocked CPU kernel)
//!   1.53 ×, with the same roundings.

mod common;

use common::*;
use qwen2_burn::core::burn::tensor::DType;
use qwen2_burn::core::fallback::run_with_fallback;
use qwen2_burn::core::generate::{generate, GenerateOptions};
use qwen2_burn::core::monitor::{forward_checked, MonitorMode, StabilityMonitor};
use qwen2_burn::core::observe::Op;
use qwen2_burn::core::precision::{Choice, DeviceKind, Hardware, PolicyTable, Rule};
use qwen2_burn::core::{Error, LogitsFor, Policy};

fn logits_of(name: &str, policy: Policy) -> Result<Vec<f32>, Error> {
    let g = goldens(name);
    let model = load(name, policy.plan());
    forward_checked(&model, &g.prompt_ids, LogitsFor::All, MonitorMode::Cheap).map(to_f32)
}

#[test]
fn each_plan_holds_each_role_in_its_dtype() {
    let g = goldens("untied-bf16-mqa");
    let expect: [(Policy, DType, DType, DType, DType); 4] = [
        // policy, residual stream, gate/up, down_proj, logits
        (Policy::F32, DType::F32, DType::F32, DType::F32, DType::F32),
        (
            Policy::Bf16,
            DType::BF16,
            DType::BF16,
            DType::BF16,
            DType::F32,
        ),
        (Policy::F16, DType::F16, DType::F16, DType::F16, DType::F32),
        (
            Policy::F16Safe,
            DType::F32,
            DType::F16,
            DType::F32,
            DType::F32,
        ),
    ];
    for (policy, residual, gate, down, logits) in expect {
        let model = load("untied-bf16-mqa", policy.plan());
        assert_eq!(
            model.embed_tokens.dense().unwrap().dtype(),
            DType::from(policy.plan().weights),
            "{policy}"
        );
        let mut cache = model.new_cache(g.prompt_ids.len());
        let mut monitor = StabilityMonitor::new(MonitorMode::Full);
        let out = model
            .forward_observed(&g.prompt_ids, &mut cache, LogitsFor::Last, &mut monitor)
            .unwrap();
        assert_eq!(out.dtype(), logits, "{policy}: logits");
        assert_eq!(
            cache.dtype(),
            DType::from(policy.plan().kv_cache),
            "{policy}: kv cache"
        );
        for s in monitor.stats() {
            let want = match s.site.op {
                Op::LayerOutput | Op::AttentionResidual | Op::Embedding => residual,
                Op::MlpGate | Op::MlpUp | Op::InputNorm | Op::PostAttentionNorm | Op::FinalNorm => {
                    gate
                }
                Op::MlpDown | Op::AttentionOutput => down,
                Op::Logits => logits,
            };
            assert_eq!(s.dtype, want, "{policy}: {}", s.site);
        }
    }
}

#[test]
fn bf16_is_within_hf_bf16_error_on_every_fixture() {
    for name in FIXTURES {
        let g = goldens(name);
        let err = max_abs_diff(&logits_of(name, Policy::Bf16).unwrap(), &g.logits_all);
        let hf = hf_err(name, "hf_bf16_max_abs_err").unwrap();
        println!("{name}: bf16 {err:.3e}, HF bf16 {hf:.3e}");
        assert!(
            err <= 1.1 * hf,
            "{name}: bf16 max |Δ| {err} vs HF bf16 {hf}"
        );
    }
}

#[test]
fn f16_safe_beats_hf_f16_on_every_fixture() {
    for name in FIXTURES {
        let g = goldens(name);
        let err = max_abs_diff(&logits_of(name, Policy::F16Safe).unwrap(), &g.logits_all);
        let bound = hf_err(name, "hf_f16_max_abs_err")
            .or_else(|| hf_err(name, "hf_bf16_max_abs_err"))
            .unwrap();
        println!("{name}: f16-safe {err:.3e}, bound {bound:.3e}");
        assert!(err <= bound, "{name}: f16-safe max |Δ| {err} > {bound}");
    }
}

#[test]
fn naive_f16_matches_hf_f16_where_hf_survives() {
    for name in FIXTURES.iter().filter(|n| **n != "massive-1e5") {
        let g = goldens(name);
        let err = max_abs_diff(&logits_of(name, Policy::F16).unwrap(), &g.logits_all);
        let hf = hf_err(name, "hf_f16_max_abs_err").unwrap();
        assert!(err <= 2.0 * hf, "{name}: f16 max |Δ| {err} vs HF f16 {hf}");
    }
}

#[test]
fn f16_overflow_is_named_at_the_op_hf_overflows() {
    let hf_site = facts("massive-1e5")["hf_half_runs"]["f16"]["first_nonfinite_module"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(hf_site, "model.layers.0.mlp.down_proj");
    match logits_of("massive-1e5", Policy::F16) {
        Err(Error::NonFinite(r)) => {
            assert_eq!(r.site, hf_site);
            assert_eq!(r.layer, "0");
            assert_eq!(r.dtype, "f16");
            assert!(r.inf > 0);
            assert!(
                r.peak_before > 10.0 && r.peak_before < 65504.0,
                "{}",
                r.peak_before
            );
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
}

#[test]
fn f16_survives_the_2e4_fixture_because_norms_accumulate_in_f32() {
    let peak = facts("massive-2e4")["max_abs_hidden_state"]
        .as_f64()
        .unwrap();
    assert!(
        peak > 1.5e4 && peak < 65504.0 && peak * peak > 65504.0,
        "{peak}"
    );
    assert!(logits_of("massive-2e4", Policy::F16)
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
}

#[test]
fn generation_never_emits_a_token_from_non_finite_logits() {
    let g = goldens("massive-1e5");
    let model = load("massive-1e5", Policy::F16.plan());
    let mut emitted = Vec::new();
    let e = generate(&model, &g.prompt_ids, &GenerateOptions::greedy(4), |id| {
        emitted.push(id)
    })
    .unwrap_err();
    assert!(
        matches!(&e, Error::NonFinite(r) if r.site == "model.layers.0.mlp.down_proj" && r.step == 0),
        "{e}"
    );
    assert!(emitted.is_empty());
    // without the monitor the sampler still refuses, and the error still names the op
    let opts = GenerateOptions {
        monitor: None,
        ..GenerateOptions::greedy(4)
    };
    let e = generate(&model, &g.prompt_ids, &opts, |id| emitted.push(id)).unwrap_err();
    assert!(matches!(e, Error::NonFinite(_)), "{e}");
    assert!(emitted.is_empty());
}

fn gpu(supports_bf16: bool) -> Hardware {
    Hardware {
        backend: "test",
        name: "test GPU".into(),
        kind: DeviceKind::DiscreteGpu,
        supports_f16: true,
        supports_bf16,
        compute_capability: Some((7, 5)),
        features: vec![],
    }
}

/// A table whose `auto` picks the naive f16 plan, to drive the fallback chain.
static F16_TABLE: PolicyTable = PolicyTable {
    backend: "test",
    rules: &[Rule {
        name: "always-f16",
        applies: |_, _| true,
        policy: Policy::F16,
        reason: "test",
    }],
    training: &[],
};

#[test]
fn auto_with_fallback_ends_finite_and_says_which_plan() {
    let g = goldens("massive-1e5");
    let resolved = F16_TABLE.select(&gpu(false), Choice::Auto).unwrap();
    assert_eq!(
        resolved.fallbacks,
        vec![Policy::F16Safe, Policy::F32],
        "bf16 skipped: unsupported"
    );
    let outcome = run_with_fallback(&resolved, resolved.auto, |policy| {
        let model = load("massive-1e5", policy.plan());
        generate(
            &model,
            &g.prompt_ids,
            &GenerateOptions::greedy(g.greedy_ids.len()),
            |_| {},
        )
    })
    .unwrap();
    assert_eq!(outcome.policy, Policy::F16Safe);
    assert_eq!(outcome.failed.len(), 1);
    assert_eq!(outcome.failed[0].policy, Policy::F16);
    assert_eq!(
        outcome.value.ids, g.greedy_ids,
        "f16-safe greedy equals HF f32 greedy"
    );

    // without fallback the first error is returned as is
    let e =
        run_with_fallback(&resolved, false, |policy| logits_of("massive-1e5", policy)).unwrap_err();
    assert!(matches!(e, Error::NonFinite(_)));
}

#[test]
fn a_policy_the_device_cannot_run_is_refused_up_front() {
    let e = F16_TABLE
        .select(&gpu(false), Choice::Fixed(Policy::Bf16))
        .unwrap_err();
    assert!(
        e.to_string().contains("bf16") && e.to_string().contains("test GPU"),
        "{e}"
    );
    assert!(F16_TABLE
        .select(&gpu(true), Choice::Fixed(Policy::Bf16))
        .is_ok());
}

#[test]
fn full_monitor_reports_peaks_and_headroom() {
    let g = goldens("massive-1e5");
    let model = load("massive-1e5", Policy::F16Safe.plan());
    let mut cache = model.new_cache(g.prompt_ids.len());
    let mut monitor = StabilityMonitor::new(MonitorMode::Full);
    model
        .forward_observed(&g.prompt_ids, &mut cache, LogitsFor::Last, &mut monitor)
        .unwrap();
    let down = monitor
        .stats()
        .iter()
        .find(|s| s.site.to_string() == "model.layers.0.mlp.down_proj")
        .cloned()
        .unwrap();
    assert!(
        down.peak_abs > 9e4 && down.peak_abs < 1.1e5,
        "{}",
        down.peak_abs
    );
    assert!(down.is_finite() && down.dtype == DType::F32);
    assert!(down.headroom_used() < 1e-30, "f32 has room");
    let gate = monitor
        .stats()
        .iter()
        .find(|s| s.site.to_string() == "model.layers.0.mlp.gate_proj")
        .unwrap();
    assert_eq!(gate.dtype, DType::F16);
    assert!(gate.headroom_used() > 1e-4 && gate.headroom_used() < 1.0);
    let peaks = monitor.layer_peaks(2);
    assert!(peaks[0] > 9e4 && peaks[1] > 9e4, "{peaks:?}");
}
