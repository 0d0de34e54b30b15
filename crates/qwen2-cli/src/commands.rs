//! The subcommands, written once over any [`Platform`] and dispatched on `--backend`.

use std::error::Error;
use std::time::Instant;

use qwen2_burn::core::fallback::{run_with_fallback, Outcome};
use qwen2_burn::core::generate::{generate_in_cache, Flow, Generation};
use qwen2_burn::core::monitor::{forward_checked, MonitorMode};
use qwen2_burn::core::precision::{Choice, Resolved};
use qwen2_burn::core::{LogitsFor, Platform, Policy, Qwen2Model};

use qwen2_burn::core::text::TextStream;

use crate::args::{Cli, Command, GenerateArgs, LogitsArgs, ModelArgs, OnNonFinite};
use crate::options::{generate_options, model_tokenizer};

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
        Command::Run(a) => a.model.backend.clone(),
        Command::Chat(a) => a.model.backend.clone(),
        Command::Bench(a) => a.model.backend.clone(),
        Command::Finetune(a) => a.backend.clone(),
        Command::Merge(_) => "auto".into(),
        Command::Doctor(a) => return doctor(a.json),
        Command::Tokenize(a) => return crate::text_cmds::tokenize(a),
        Command::Detokenize(a) => return crate::text_cmds::detokenize(a),
    };
    if let Some(dir) = model_dir(&cli.command) {
        check_model_dir(dir)?;
    }
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
        known if ["cpu", "wgpu", "cuda"].contains(&known) => Err(format!(
            "this qwen2 was built without the `{known}` backend; rebuild it with \
             `cargo install --path crates/qwen2-cli --features {known}` (or `cargo build --release \
             --features qwen2-cli/{known}`); this binary has: {} (and auto)",
            COMPILED_BACKENDS.join(", ")
        )
        .into()),
        other => Err(format!(
            "unknown backend `{other}`; this binary has: {} (and auto)",
            COMPILED_BACKENDS.join(", ")
        )
        .into()),
    }
}

/// The model directory a command reads, if it reads one.
fn model_dir(c: &Command) -> Option<&std::path::Path> {
    match c {
        Command::Logits(a) => Some(&a.model.model),
        Command::Generate(a) => Some(&a.model.model),
        Command::Run(a) => Some(&a.model.model),
        Command::Chat(a) => Some(&a.model.model),
        Command::Bench(a) => Some(&a.model.model),
        Command::Finetune(a) => Some(&a.model),
        Command::Merge(a) => Some(&a.model),
        Command::Diagnose(a) => Some(&a.model),
        _ => None,
    }
}

/// A model path that does not exist, or is a file, is the first thing to say.
fn check_model_dir(dir: &std::path::Path) -> CliResult {
    if !dir.exists() {
        return Err(format!("--model {}: no such directory", dir.display()).into());
    }
    if !dir.is_dir() {
        return Err(format!(
            "--model {}: is a file; give the model directory (config.json, *.safetensors, tokenizer.json)",
            dir.display()
        )
        .into());
    }
    Ok(())
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
    #[allow(unused_mut)]
    let mut reports: Vec<serde_json::Value> = vec![
        #[cfg(feature = "cpu")]
        crate::doctor::backend_report::<qwen2_burn::cpu::Cpu>(),
        #[cfg(feature = "wgpu")]
        crate::doctor::backend_report::<qwen2_burn::wgpu::Wgpu>(),
        #[cfg(feature = "cuda")]
        crate::doctor::backend_report::<qwen2_burn::cuda::Cuda>(),
    ];
    for name in ["cpu", "wgpu", "cuda"] {
        if !COMPILED_BACKENDS.contains(&name) {
            reports.push(serde_json::json!({
                "backend": name,
                "compiled": false,
                "how": format!("cargo install --path crates/qwen2-cli --features {name}"),
            }));
        }
    }
    crate::doctor::print(&reports, json)
}

fn run_on<P: Platform>(cli: Cli) -> CliResult {
    match cli.command {
        Command::Logits(a) => logits::<P>(a),
        Command::Generate(a) => generate_cmd::<P>(a),
        Command::Diagnose(a) => crate::diagnose::diagnose_cmd::<P>(a),
        Command::Run(a) => crate::chat_cmds::run_cmd::<P>(a),
        Command::Chat(a) => crate::chat_cmds::chat_cmd::<P>(a),
        Command::Bench(a) => crate::bench::bench_cmd::<P>(a),
        Command::Finetune(a) => crate::finetune_cmd::finetune_cmd::<P>(*a),
        Command::Merge(a) => crate::finetune_cmd::merge_cmd::<P>(a),
        Command::Doctor(a) => doctor(a.json),
        Command::Tokenize(a) => crate::text_cmds::tokenize(&a),
        Command::Detokenize(a) => crate::text_cmds::detokenize(&a),
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
pub fn resolve<P: Platform>(
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

/// Loads the model with `policy`'s plan, drawing a progress line on stderr when it is a
/// terminal and the load takes more than a moment.
pub fn load<P: Platform>(
    args: &ModelArgs,
    policy: Policy,
    device: &burn::tensor::Device<P::B>,
) -> qwen2_burn::core::Result<Qwen2Model<P::B>> {
    use std::io::IsTerminal;
    tracing::info!(backend = P::NAME, %policy, model = %args.model.display(), "loading");
    let start = Instant::now();
    let show = std::io::stderr().is_terminal();
    let mut drawn = false;
    let model = P::load_model(&args.model, policy.plan(), device, &mut |done, total| {
        let secs = start.elapsed().as_secs_f64();
        if show && (drawn || secs > 0.5) && done < total {
            let width = 30;
            let filled = width * done / total;
            eprint!(
                "\rloading {} ({policy}) [{}{}] {done}/{total} {secs:.1}s",
                args.model.display(),
                "#".repeat(filled),
                "-".repeat(width - filled)
            );
            drawn = true;
        }
    });
    if drawn {
        eprint!("\r\x1b[K");
    }
    let mut model = model?;
    if let Some(dir) = &args.adapter {
        let adapter = qwen2_burn::core::adapter::Adapter::open(dir)?;
        adapter.attach(&mut model, burn::tensor::FloatDType::F32)?;
    }
    tracing::info!(seconds = start.elapsed().as_secs_f64(), "model loaded");
    Ok(model)
}

/// Tells the user about plans that overflowed before the one that worked.
pub fn report_fallbacks<T>(outcome: &Outcome<T>) {
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

pub fn fallback_json<T>(outcome: &Outcome<T>) -> serde_json::Value {
    outcome
        .failed
        .iter()
        .map(|f| serde_json::json!({"precision": f.policy.name(), "error": f.error.to_string()}))
        .collect()
}

fn logits<P: Platform>(a: LogitsArgs) -> CliResult {
    let device = device_of::<P>()?;
    let (resolved, fallback) = resolve::<P>(&a.model, &device)?;
    let ids = &a.ids;
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
    let dir = &a.model.model;
    let prompt = if a.ids.is_empty() {
        Some(crate::options::prompt_text(&a.prompt)?.ok_or(
            "give the prompt as --ids, --prompt, --prompt-file, a positional argument or on stdin",
        )?)
    } else {
        None
    };
    // Text needs the tokenizer; ids need it only for stop strings.
    let tokenizer = if prompt.is_some() || !a.sampling.stop.is_empty() {
        Some(model_tokenizer(dir, "--prompt / --stop")?)
    } else {
        None
    };
    let prompt_ids = match (&prompt, &tokenizer) {
        (Some(text), Some(t)) => t.encode(text)?,
        _ => a.ids.clone(),
    };
    let opts = generate_options(&a.sampling, dir, &[], 32)?;
    let device = device_of::<P>()?;
    let (resolved, fallback) = resolve::<P>(&a.model, &device)?;
    let as_text = prompt.is_some();
    // Stream only when no fallback can restart the output halfway.
    let stream = !a.json && (!fallback || resolved.fallbacks.is_empty());
    let outcome = run_with_fallback(&resolved, fallback, |policy| {
        let model = load::<P>(&a.model, policy, &device)?;
        let needed = prompt_ids.len() + opts.max_new_tokens.saturating_sub(1);
        // An explicit --max-new-tokens that cannot fit is an error; a default is capped.
        if a.sampling.max_new_tokens.is_some() && needed > model.context_length() {
            return Err(qwen2_burn::core::Error::ContextOverflow {
                requested: prompt_ids.len() + opts.max_new_tokens,
                capacity: model.context_length(),
                limit: "the model's context length (prompt + --max-new-tokens)".into(),
            });
        }
        let mut text = tokenizer
            .as_ref()
            .map(|t| TextStream::new(t, true, &a.sampling.stop));
        let mut cache = model.new_cache(prompt_ids.len() + opts.max_new_tokens);
        let mut streamed_ids = 0;
        let g = generate_in_cache(&model, &mut cache, &[], &prompt_ids, &opts, |id| {
            let mut flow = Flow::Continue;
            if let Some(t) = text.as_mut().filter(|_| !opts.eos_token_ids.contains(&id)) {
                let step = t.push(id)?;
                if step.stopped {
                    flow = Flow::Stop;
                }
                if stream && as_text {
                    print_flush(&step.text);
                }
            }
            if stream && !as_text {
                // Comma-separated, as `tokenize` prints ids and `--ids` takes them.
                let sep = if streamed_ids == 0 { "" } else { "," };
                print_flush(&format!("{sep}{id}"));
                streamed_ids += 1;
            }
            Ok(flow)
        })?;
        let reply = match text.as_mut() {
            Some(t) => {
                let rest = t.finish()?;
                if stream && as_text {
                    print_flush(&rest);
                }
                Some(t.text().to_string())
            }
            None => None,
        };
        Ok((g, reply))
    })?;
    report_fallbacks(&outcome);
    let (out, reply): &(Generation, Option<String>) = &outcome.value;
    if a.json {
        let mut json = serde_json::json!({
            "ids": out.ids,
            "prompt_tokens": out.prompt_tokens,
            "generated_tokens": out.ids.len(),
            "stopped_on_eos": out.stopped_on_eos,
            "prefill_seconds": out.prefill_time.as_secs_f64(),
            "finish_reason": out.finish_reason(),
            "seed": opts.sampling.seed,
            "prefill_tokens_per_s": out.prefill_tokens_per_s(),
            "decode_seconds": out.decode_time.as_secs_f64(),
            "decode_tokens_per_s": out.decode_tokens_per_s(),
            "backend": P::NAME,
            "precision": outcome.policy.name(),
            "requested_precision": a.model.precision,
            "fallbacks": fallback_json(&outcome),
        });
        if let Some(text) = reply {
            json["text"] = text.clone().into();
            json["stopped_on_stop_string"] = out.stopped_by_caller.into();
        }
        println!("{json}");
    } else {
        if !stream {
            match (as_text, reply) {
                (true, Some(text)) => print!("{text}"),
                _ => {
                    let ids: Vec<String> = out.ids.iter().map(u32::to_string).collect();
                    print!("{}", ids.join(" "));
                }
            }
        }
        println!();
        eprintln!(
            "{} prompt tokens, {} generated, finish reason {} ({} plan){}{}",
            out.prompt_tokens,
            out.ids.len(),
            out.finish_reason(),
            outcome.policy,
            rate_text("; prefill", out.prefill_tokens_per_s()),
            rate_text(", decode", out.decode_tokens_per_s())
        );
    }
    Ok(())
}

/// `"{label} 12.3 tok/s"`, or nothing when there is no rate to show.
pub fn rate_text(label: &str, rate: Option<f64>) -> String {
    rate.map_or(String::new(), |r| format!("{label} {r:.1} tok/s"))
}

/// Prints streamed text at once (stdout is line-buffered otherwise).
pub fn print_flush(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
