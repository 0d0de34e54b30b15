//! The subcommands, written once over any [`Platform`] and dispatched on `--backend`.

use qwen2_burn::core::Platform;

use crate::args::{Cli, Command};
use crate::model_setup::CliResult;

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
        Command::Serve(a) => a.model.backend.clone(),
        Command::Doctor(a) => return doctor(a.json),
        Command::Tokenize(a) => return crate::text_cmds::tokenize(a),
        Command::Detokenize(a) => return crate::text_cmds::detokenize(a),
        Command::Quantize(a) => return crate::quantize_cmd::quantize_cmd(a),
    };
    if let Some(dir) = model_dir(&cli.command) {
        qwen2_burn::core::engine::check_model_dir(dir)?;
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
        Command::Serve(a) => Some(&a.model.model),
        Command::Diagnose(a) => Some(&a.model),
        Command::Quantize(a) => Some(&a.model),
        _ => None,
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

fn run_on<P: Platform + 'static>(cli: Cli) -> CliResult {
    match cli.command {
        Command::Logits(a) => crate::generate_cmd::logits::<P>(a),
        Command::Generate(a) => crate::generate_cmd::generate_cmd::<P>(a),
        Command::Diagnose(a) => crate::diagnose::diagnose_cmd::<P>(a),
        Command::Run(a) => crate::chat_cmds::run_cmd::<P>(a),
        Command::Chat(a) => crate::chat_cmds::chat_cmd::<P>(a),
        Command::Bench(a) => crate::bench::bench_cmd::<P>(a),
        Command::Finetune(a) => crate::finetune_cmd::finetune_cmd::<P>(*a),
        Command::Merge(a) => crate::finetune_cmd::merge_cmd::<P>(a),
        Command::Serve(a) => crate::serve_cmd::serve_cmd::<P>(*a),
        Command::Doctor(a) => doctor(a.json),
        Command::Tokenize(a) => crate::text_cmds::tokenize(&a),
        Command::Detokenize(a) => crate::text_cmds::detokenize(&a),
        Command::Quantize(a) => crate::quantize_cmd::quantize_cmd(&a),
    }
}
