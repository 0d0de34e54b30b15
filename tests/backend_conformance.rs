//! One conformance suite, written once and instantiated for every backend compiled in
//! (`--features wgpu`, `--features cuda`): every fixture × every policy the device supports,
//! against the HF goldens, plus backend-vs-backend agreement on the same plan.
//!
//! Tolerances (max |Δlogits| against HF transformers' f32 run, all 72 positions):
//! - f32: 1e-4 on the CPU, 1e-3 on GPUs (other reduction orders and fused multiply-adds);
//! - bf16: 1.25 × the error of HF's own bf16 run;
//! - f16-safe: 1.25 × the error of HF's own f16 run (HF's bf16 error where HF's f16 is NaN);
//! - f16: 2 × HF's f16 error where HF survives (the naive plan amplifies summation order, see
//!   tests/precision_cpu.rs), and a named non-finite error on massive-1e5.

mod common;

use common::*;
use qwen2_burn::core::monitor::{forward_checked, MonitorMode};
use qwen2_burn::core::precision::{can_run, Choice};
use qwen2_burn::core::{Error, LogitsFor, Platform, Policy};

/// The tolerance for `policy` on fixture `name`, or `None` when the plan must overflow there.
fn tolerance(name: &str, policy: Policy, backend: &str) -> Option<f32> {
    let hf_bf16 = hf_err(name, "hf_bf16_max_abs_err").unwrap();
    let hf_f16 = hf_err(name, "hf_f16_max_abs_err");
    match policy {
        Policy::F32 if backend == "cpu" => Some(1e-4),
        Policy::F32 => Some(1e-3),
        Policy::Bf16 => Some(1.25 * hf_bf16),
        Policy::F16Safe => Some(1.25 * hf_f16.unwrap_or(hf_bf16)),
        Policy::F16 => hf_f16.map(|e| 2.0 * e),
    }
}

/// Logits `[P, V]` of `policy` on fixture `name`, on the first device of `P`.
pub fn run_on<P: Platform>(name: &str, policy: Policy) -> Result<Vec<f32>, Error> {
    let device = P::devices().into_iter().next().unwrap_or_else(|| {
        panic!(
            "backend {} has no device here (CI installs mesa-vulkan-drivers for wgpu)",
            P::NAME
        )
    });
    let g = goldens(name);
    let model = P::load_model(fixture_dir(name), policy.plan(), &device, &mut |_, _| {})?;
    let logits = forward_checked(&model, &g.prompt_ids, LogitsFor::All, MonitorMode::Cheap)?;
    Ok(logits
        .cast(qwen2_burn::core::burn::tensor::FloatDType::F32)
        .into_data()
        .to_vec::<f32>()
        .unwrap())
}

/// Every fixture × every policy `P`'s first device can run.
pub fn check_every_fixture_and_policy<P: Platform>() {
    let device = P::devices().into_iter().next().expect("a device");
    let hw = P::probe(&device);
    println!("{}: {hw}", P::NAME);
    for policy in Policy::ALL
        .iter()
        .copied()
        .filter(|p| can_run(&hw, *p).is_ok())
    {
        for name in FIXTURES {
            let g = goldens(name);
            match (run_on::<P>(name, policy), tolerance(name, policy, P::NAME)) {
                (Ok(logits), Some(tol)) => {
                    let err = max_abs_diff(&logits, &g.logits_all);
                    println!("  {policy:<8} {name:<16} max |Δ| {err:.3e} (tolerance {tol:.3e})");
                    assert!(err <= tol, "{}: {policy} on {name}: {err} > {tol}", P::NAME);
                }
                (Err(Error::NonFinite(r)), None) => {
                    assert_eq!(
                        r.site,
                        "model.layers.0.mlp.down_proj",
                        "{}: {policy} on {name}",
                        P::NAME
                    );
                }
                (other, tol) => panic!(
                    "{}: {policy} on {name}: {:?} with tolerance {tol:?}",
                    P::NAME,
                    other.map(|_| ())
                ),
            }
        }
    }
}

/// A policy the device cannot run is an error from the table, before any kernel runs.
pub fn check_refusals<P: Platform>() {
    let device = P::devices().into_iter().next().expect("a device");
    let hw = P::probe(&device);
    for policy in Policy::ALL.iter().copied() {
        let selected = P::policy_table().select(&hw, Choice::Fixed(policy));
        assert_eq!(
            selected.is_ok(),
            can_run(&hw, policy).is_ok(),
            "{}: {policy}",
            P::NAME
        );
    }
    let auto = P::policy_table()
        .select(&hw, Choice::Auto)
        .expect("auto always resolves");
    assert!(can_run(&hw, auto.policy).is_ok());
}

/// GPU backends report their allocator's memory, which holds at least the model's weights; the
/// CPU reports none (its memory is the process's resident set).
pub fn check_device_memory<P: Platform>() {
    let device = P::devices().into_iter().next().expect("a device");
    let model = P::load_model(
        fixture_dir("tied-f32-gqa"),
        Policy::F32.plan(),
        &device,
        &mut |_, _| {},
    )
    .unwrap();
    let c = model.config();
    let weights = (c.vocab_size * c.hidden_size * 4) as u64;
    match (P::NAME, P::device_memory(&device)) {
        ("cpu", None) => {}
        ("cpu", Some(m)) => panic!("the CPU reported device memory {m:?}"),
        (_, Some(m)) => {
            assert!(m.bytes_in_use >= weights, "{}: {m:?} < {weights}", P::NAME);
            assert!(m.bytes_reserved >= m.bytes_in_use, "{}: {m:?}", P::NAME);
        }
        (name, None) => panic!("{name} reported no device memory"),
    }
}

/// The first steps of PyTorch's fine-tuning runs (full and LoRA, f32) on this backend: each
/// step's loss and gradient norm within 1e-4 relative of PyTorch's (the CPU is within 3e-7).
pub fn check_training<P: Platform>() {
    use qwen2_burn::train::{Autodiff, TrainPrecision, Trainer};
    let device = P::devices().into_iter().next().expect("a device");
    let g = train_goldens();
    for kind in ["full", "lora"] {
        let out = tempfile::tempdir().unwrap();
        let opts = train_options(kind, TrainPrecision::F32, out.path());
        let mut t = Trainer::<Autodiff<P::B>>::new(opts, &device).unwrap();
        let mut worst = 0f64;
        for i in 0..4 {
            let r = t.step().unwrap();
            let want = &g[kind]["f32"][i];
            for (ours, key) in [(r.loss, "loss"), (r.grad_norm, "grad_norm")] {
                let theirs = want[key].as_f64().unwrap();
                let rel = (ours - theirs).abs() / theirs.abs();
                worst = worst.max(rel);
                assert!(
                    rel < 1e-4,
                    "{} {kind} step {i}: {key} {ours} vs PyTorch {theirs}",
                    P::NAME
                );
            }
        }
        println!(
            "{} {kind}: 4 training steps within {worst:.1e} of PyTorch",
            P::NAME
        );
    }
}

macro_rules! conformance_suite {
    ($module:ident, $platform:ty) => {
        mod $module {
            #[test]
            fn every_fixture_and_supported_policy_matches_hf() {
                super::check_every_fixture_and_policy::<$platform>();
            }

            #[test]
            fn unsupported_policies_are_refused_up_front() {
                super::check_refusals::<$platform>();
            }

            #[test]
            fn training_steps_match_pytorch() {
                super::check_training::<$platform>();
            }

            #[test]
            fn device_memory_is_reported_where_the_backend_has_it() {
                super::check_device_memory::<$platform>();
            }
        }
    };
}

#[cfg(feature = "cpu")]
conformance_suite!(cpu, qwen2_burn::cpu::Cpu);
#[cfg(feature = "wgpu")]
conformance_suite!(wgpu, qwen2_burn::wgpu::Wgpu);
#[cfg(feature = "cuda")]
conformance_suite!(cuda, qwen2_burn::cuda::Cuda);

/// The same plan on two backends gives the same logits (tolerance: twice the HF-relative bound).
#[cfg(all(feature = "cpu", feature = "wgpu"))]
#[test]
fn wgpu_agrees_with_cpu_on_the_same_plan() {
    use qwen2_burn::{cpu::Cpu, wgpu::Wgpu};
    let hw = Wgpu::probe(&Wgpu::devices()[0]);
    for policy in [Policy::F32, Policy::F16Safe]
        .into_iter()
        .filter(|p| can_run(&hw, *p).is_ok())
    {
        for name in ["untied-bf16-mqa", "massive-1e5"] {
            let a = run_on::<Cpu>(name, policy).unwrap();
            let b = run_on::<Wgpu>(name, policy).unwrap();
            let tol = 2.0 * tolerance(name, policy, "wgpu").unwrap();
            let err = max_abs_diff(&a, &b);
            assert!(err <= tol, "{policy} on {name}: cpu vs wgpu {err} > {tol}");
        }
    }
}
