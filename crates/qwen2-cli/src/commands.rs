//! The subcommands, written once over any [`Platform`] and dispatched on `--backend`.

use std::error::Error;
use std::time::Instant;

use qwen2_burn::core::generate::{generate, GenerateOptions, Sampling};
use qwen2_burn::core::{LogitsFor, Platform, Policy, PrecisionPlan, Qwen2Model};

use crate::args::{Cli, Command, GenerateArgs, LogitsArgs, ModelArgs};

type CliResult<T = ()> = Result<T, Box<dyn Error>>;

/// Backends compiled into this binary, in `auto` preference order.
const COMPILED_BACKENDS: &[&str] = &[
    #[cfg(feature = "cpu")]
    "cpu",
];

pub fn run(cli: Cli) -> CliResult {
    let backend = match &cli.command {
        Command::Logits(a) => a.model.backend.clone(),
        Command::Generate(a) => a.model.backend.clone(),
    };
    match backend.as_str() {
        #[cfg(feature = "cpu")]
        "cpu" | "auto" => run_on::<qwen2_burn::cpu::Cpu>(cli),
        other => Err(format!(
            "unknown or not compiled-in backend `{other}`; this binary has: {} (and auto)",
            COMPILED_BACKENDS.join(", ")
        )
        .into()),
    }
}

fn run_on<P: Platform>(cli: Cli) -> CliResult {
    match cli.command {
        Command::Logits(a) => logits::<P>(a),
        Command::Generate(a) => generate_cmd::<P>(a),
    }
}

/// Resolves `--precision` for platform `P`.
fn resolve_plan<P: Platform>(name: &str) -> CliResult<(Policy, PrecisionPlan)> {
    let policy = if name == "auto" {
        // The CPU runs everything in f32 until a benchmark shows a lower precision both faster
        // and within tolerance.
        Policy::F32
    } else {
        name.parse::<Policy>()?
    };
    tracing::info!(backend = P::NAME, %policy, requested = name, "precision plan");
    Ok((policy, policy.plan()))
}

fn load<P: Platform>(args: &ModelArgs) -> CliResult<Qwen2Model<P::B>> {
    let (_, plan) = resolve_plan::<P>(&args.precision)?;
    let device = P::devices()
        .into_iter()
        .next()
        .ok_or_else(|| format!("backend `{}` has no usable device on this machine", P::NAME))?;
    tracing::info!(device = %P::describe(&device), model = %args.model.display(), "loading");
    let start = Instant::now();
    let model = Qwen2Model::<P::B>::load(&args.model, plan, &device)?;
    tracing::info!(seconds = start.elapsed().as_secs_f64(), "model loaded");
    Ok(model)
}

fn logits<P: Platform>(a: LogitsArgs) -> CliResult {
    let model = load::<P>(&a.model)?;
    let ids = &a.model.ids;
    let mut cache = model.new_cache(ids.len());
    let which = if a.all_positions {
        LogitsFor::All
    } else {
        LogitsFor::Last
    };
    let logits = model.forward(ids, &mut cache, which)?;
    let [rows, vocab] = logits.dims();
    let values = logits
        .cast(burn::tensor::FloatDType::F32)
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| format!("reading logits back: {e:?}"))?;
    let shape: Vec<usize> = if a.all_positions {
        vec![rows, vocab]
    } else {
        vec![vocab]
    };
    crate::npy::write_f32(&a.out, &shape, &values)
        .map_err(|e| format!("cannot write {}: {e}", a.out.display()))?;
    eprintln!(
        "wrote {} float32 logits {:?} to {}",
        values.len(),
        shape,
        a.out.display()
    );
    Ok(())
}

fn generate_cmd<P: Platform>(a: GenerateArgs) -> CliResult {
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        return Err(format!("--temperature must be >= 0, got {}", a.temperature).into());
    }
    let model = load::<P>(&a.model)?;
    let sampling = if a.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Temperature {
            temperature: a.temperature,
            seed: a.seed,
        }
    };
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling,
        eos_token_ids: a
            .eos
            .clone()
            .unwrap_or_else(|| model.config().eos_token_ids.clone()),
    };
    let out = generate(&model, &a.model.ids, &opts, |id| {
        if !a.json {
            print!("{id} ");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
    })?;
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
            "precision": a.model.precision,
        });
        println!("{json}");
    } else {
        println!();
        eprintln!(
            "{} prompt tokens, {} generated; prefill {:.1} tok/s, decode {:.1} tok/s",
            out.prompt_tokens,
            out.ids.len(),
            out.prefill_tokens_per_s(),
            out.decode_tokens_per_s()
        );
    }
    Ok(())
}
