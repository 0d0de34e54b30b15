//! The subcommands, written once over any [`Platform`] and dispatched on `--backend`.

use std::error::Error;
use std::time::Instant;

use qwen2_burn::core::fallback::{run_with_fallback, Outcome};
use qwen2_burn::core::generate::{generate, GenerateOptions, Sampling};
use qwen2_burn::core::monitor::{forward_checked, MonitorMode};
use qwen2_burn::core::precision::{Choice, Resolved};
use qwen2_burn::core::{LogitsFor, Platform, Policy, Qwen2Model};

use crate::args::{Cli, Command, GenerateArgs, LogitsArgs, ModelArgs, OnNonFinite};

pub type CliResult<T = ()> = Result<T, Box<dyn Error>>;

/// Backends compiled into this binary, in `auto` preference order.
const COMPILED_BACKENDS: &[&str] = &[
    #[cfg(feature = "cuda")]
    "cuda",
    #[cfg(feature = "wgpu")]
    "wgpu",
    #[cfg(feature = "cpu")]
    "cpu",
];

pub fn run(cli: Cli) -> CliResult {
    let requested = match &cli.command {
        Command::Logits(a) => a.model.backend.clone(),
        Command::Generate(a) => a.model.backend.clone(),
        Command::Diagnose(a) => a.backend.clone(),
        Command::Doctor(a) => return doctor(a.json),
    };
    let backend = if requested == "auto" {
        auto_backend()?
    } else {
        requested
    };
    tracing::info!(%backend, "backend");
    match backend.as_str() {
        #[cfg(feature = "cpu")]
        "cpu" => run_on::<qwen2_burn::cpu::Cpu>(cli),
        #[cfg(feature = "wgpu")]
        "wgpu" => run_on::<qwen2_burn::wgpu::Wgpu>(cli),
        #[cfg(feature = "cuda")]
        "cuda" => run_on::<qwen2_burn::cuda::Cuda>(cli),
        other => Err(format!(
            "unknown or not compiled-in backend `{other}`; this binary has: {} (and auto)",
            COMPILED_BACKENDS.join(", ")
        )
        .into()),
    }
}

/// `auto`: CUDA with a device, else a hardware (not software) wgpu adapter, else the CPU.
fn auto_backend() -> CliResult<String> {
    #[cfg(feature = "cuda")]
    if !qwen2_burn::cuda::Cuda::devices().is_empty() {
        return Ok("cuda".into());
    }
    #[cfg(feature = "wgpu")]
    if qwen2_burn::wgpu::adapters()
        .iter()
        .any(|a| !qwen2_burn::wgpu::is_software(&a.info))
    {
        return Ok("wgpu".into());
    }
    #[cfg(feature = "cpu")]
    return Ok("cpu".into());
    #[allow(unreachable_code)]
    COMPILED_BACKENDS
        .first()
        .map(|b| b.to_string())
        .ok_or_else(|| "no backend compiled in".into())
}

fn doctor(json: bool) -> CliResult {
    let reports: Vec<serde_json::Value> = vec![
        #[cfg(feature = "cpu")]
        crate::doctor::backend_report::<qwen2_burn::cpu::Cpu>(),
        #[cfg(feature = "wgpu")]
        crate::doctor::backend_report::<qwen2_burn::wgpu::Wgpu>(),
        #[cfg(feature = "cuda")]
        crate::doctor::backend_report::<qwen2_burn::cuda::Cuda>(),
    ];
    crate::doctor::print(&reports, json)
}

fn run_on<P: Platform>(cli: Cli) -> CliResult {
    match cli.command {
        Command::Logits(a) => logits::<P>(a),
        Command::Generate(a) => generate_cmd::<P>(a),
        Command::Diagnose(a) => crate::diagnose::diagnose_cmd::<P>(a),
        Command::Doctor(a) => doctor(a.json),
    }
}

/// The first device of `P`.
pub fn device_of<P: Platform>() -> CliResult<burn::tensor::Device<P::B>> {
    P::devices()
        .into_iter()
        .next()
        .ok_or_else(|| {
            format!(
                "backend `{}` has no usable device on this machine{}",
                P::NAME,
                match P::NAME {
                    "wgpu" => " (no Vulkan/Metal/DX12 adapter; on Linux without a GPU, install Mesa's software Vulkan driver: apt-get install mesa-vulkan-drivers)",
                    "cuda" => " (no NVIDIA driver or GPU found)",
                    _ => "",
                }
            )
            .into()
        })
}

/// Resolves `--precision` through `P`'s policy table for the probed device.
fn resolve<P: Platform>(
    args: &ModelArgs,
    device: &burn::tensor::Device<P::B>,
) -> CliResult<(Resolved, bool)> {
    let choice: Choice = args.precision.parse()?;
    let hw = P::probe(device);
    let resolved = P::policy_table().select(&hw, choice)?;
    tracing::info!(hardware = %hw, policy = %resolved.policy, rule = ?resolved.rule, reason = %resolved.reason, "precision plan");
    let fallback = match args.on_nonfinite {
        Some(OnNonFinite::Fallback) => true,
        Some(OnNonFinite::Error) => false,
        None => resolved.auto,
    };
    Ok((resolved, fallback))
}

fn load<P: Platform>(
    args: &ModelArgs,
    policy: Policy,
    device: &burn::tensor::Device<P::B>,
) -> qwen2_burn::core::Result<Qwen2Model<P::B>> {
    tracing::info!(backend = P::NAME, %policy, model = %args.model.display(), "loading");
    let start = Instant::now();
    let model = Qwen2Model::<P::B>::load(&args.model, policy.plan(), device)?;
    tracing::info!(seconds = start.elapsed().as_secs_f64(), "model loaded");
    Ok(model)
}

/// Tells the user about plans that overflowed before the one that worked.
fn report_fallbacks<T>(outcome: &Outcome<T>) {
    for failed in &outcome.failed {
        eprintln!(
            "warning: --precision {} produced non-finite values: {}",
            failed.policy, failed.error
        );
    }
    if !outcome.failed.is_empty() {
        eprintln!("warning: fell back to --precision {}", outcome.policy);
    }
}

fn fallback_json<T>(outcome: &Outcome<T>) -> serde_json::Value {
    outcome
        .failed
        .iter()
        .map(|f| serde_json::json!({"precision": f.policy.name(), "error": f.error.to_string()}))
        .collect()
}

fn logits<P: Platform>(a: LogitsArgs) -> CliResult {
    let device = device_of::<P>()?;
    let (resolved, fallback) = resolve::<P>(&a.model, &device)?;
    let ids = &a.model.ids;
    let which = if a.all_positions {
        LogitsFor::All
    } else {
        LogitsFor::Last
    };
    let outcome = run_with_fallback(&resolved, fallback, |policy| {
        let model = load::<P>(&a.model, policy, &device)?;
        let logits = forward_checked(&model, ids, which, MonitorMode::Cheap)?;
        Ok(logits.cast(burn::tensor::FloatDType::F32).into_data())
    })?;
    report_fallbacks(&outcome);
    let data = &outcome.value;
    let values = data
        .to_vec::<f32>()
        .map_err(|e| format!("reading logits back: {e:?}"))?;
    let shape: Vec<usize> = if a.all_positions {
        data.shape.to_vec()
    } else {
        vec![data.shape[1]]
    };
    crate::npy::write_f32(&a.out, &shape, &values)
        .map_err(|e| format!("cannot write {}: {e}", a.out.display()))?;
    eprintln!(
        "wrote float32 logits {:?} ({} plan) to {}",
        shape,
        outcome.policy,
        a.out.display()
    );
    Ok(())
}

fn generate_cmd<P: Platform>(a: GenerateArgs) -> CliResult {
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        return Err(format!("--temperature must be >= 0, got {}", a.temperature).into());
    }
    let device = device_of::<P>()?;
    let (resolved, fallback) = resolve::<P>(&a.model, &device)?;
    let sampling = if a.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Temperature {
            temperature: a.temperature,
            seed: a.seed,
        }
    };
    let outcome = run_with_fallback(&resolved, fallback, |policy| {
        let model = load::<P>(&a.model, policy, &device)?;
        let opts = GenerateOptions {
            max_new_tokens: a.max_new_tokens,
            sampling,
            eos_token_ids: a
                .eos
                .clone()
                .unwrap_or_else(|| model.config().eos_token_ids.clone()),
            monitor: Some(MonitorMode::Cheap),
        };
        // Stream only when no fallback can restart the output halfway.
        let stream = !a.json && (!fallback || resolved.fallbacks.is_empty());
        generate(&model, &a.model.ids, &opts, |id| {
            if stream {
                use std::io::Write;
                print!("{id} ");
                let _ = std::io::stdout().flush();
            }
        })
        .map(|g| (g, stream))
    })?;
    report_fallbacks(&outcome);
    let (out, streamed) = &outcome.value;
    if a.json {
        let json = serde_json::json!({
            "ids": out.ids,
            "prompt_tokens": out.prompt_tokens,
            "generated_tokens": out.ids.len(),
            "stopped_on_eos": out.stopped_on_eos,
            "prefill_seconds": out.prefill_time.as_secs_f64(),
            "prefill_tokens_per_s": out.prefill_tokens_per_s(),
            "decode_seconds": out.decode_time.as_secs_f64(),
            "decode_tokens_per_s": out.decode_tokens_per_s(),
            "backend": P::NAME,
            "precision": outcome.policy.name(),
            "requested_precision": a.model.precision,
            "fallbacks": fallback_json(&outcome),
        });
        println!("{json}");
    } else {
        if !streamed {
            let ids: Vec<String> = out.ids.iter().map(u32::to_string).collect();
            print!("{}", ids.join(" "));
        }
        println!();
        eprintln!(
            "{} prompt tokens, {} generated ({} plan); prefill {:.1} tok/s, decode {:.1} tok/s",
            out.prompt_tokens,
            out.ids.len(),
            outcome.policy,
            out.prefill_tokens_per_s(),
            out.decode_tokens_per_s()
        );
    }
    Ok(())
}
