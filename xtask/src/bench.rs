//! `cargo xtask bench`: builds the CLI in release mode, runs `qwen2 bench` once per backend and
//! precision (a fresh process each, so peak memory is per configuration) and prints a markdown
//! table with ratios to the first configuration; optionally writes all of it as JSON. With
//! `--pytorch`, HF transformers runs the same prompt with the same protocol
//! (scripts/bench_pytorch.py) and its rows join the table.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

struct Options {
    model: PathBuf,
    backends: Vec<String>,
    precisions: Vec<String>,
    pass_through: Vec<String>,
    json: Option<PathBuf>,
    pytorch: bool,
    /// `--quantize` values, one run each (`None`: the flag not given).
    quantize: Vec<Option<String>>,
    /// llama.cpp's llama-bench, run on the same GGUF file.
    llamacpp: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        model: PathBuf::new(),
        backends: vec!["cpu".into()],
        precisions: vec!["auto".into()],
        pass_through: Vec::new(),
        json: None,
        pytorch: false,
        quantize: vec![None],
        llamacpp: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let list = |v: String| v.split(',').map(str::to_string).collect::<Vec<_>>();
        match flag.as_str() {
            "--model" => o.model = PathBuf::from(value()?),
            "--backend" => o.backends = list(value()?),
            "--precision" => o.precisions = list(value()?),
            "--json" => o.json = Some(PathBuf::from(value()?)),
            "--pytorch" => o.pytorch = true,
            "--quantize" => o.quantize = list(value()?).into_iter().map(Some).collect(),
            "--llamacpp" => o.llamacpp = Some(PathBuf::from(value()?)),
            "--prompt-len" | "--gen" | "--reps" | "--ids" => {
                o.pass_through.push(flag.clone());
                o.pass_through.push(value()?);
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.model.as_os_str().is_empty() {
        return Err(
            "--model DIR|FILE.gguf is required (make one with `cargo xtask bench-model --out DIR`)"
                .into(),
        );
    }
    Ok(o)
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn median(v: &serde_json::Value, key: &str) -> f64 {
    v[key]["median"].as_f64().unwrap_or(0.0)
}

fn range(v: &serde_json::Value, key: &str) -> String {
    format!(
        "{:.1} ({:.1}–{:.1})",
        median(v, key),
        v[key]["min"].as_f64().unwrap_or(0.0),
        v[key]["max"].as_f64().unwrap_or(0.0)
    )
}

pub fn run(root: &Path, args: &[String]) -> ExitCode {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xtask bench: {e}\nusage: cargo xtask bench --model DIR|FILE.gguf [--backend cpu,wgpu,cuda] [--precision auto,f32,bf16,...] [--quantize q8_0,q4_k,none,...] [--prompt-len 128] [--gen 32] [--reps 5] [--ids FILE] [--json FILE] [--pytorch] [--llamacpp LLAMA_BENCH]");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "xtask bench: building the release CLI ({})",
        o.backends.join(", ")
    );
    if !build_release_cli(root, &o.backends) {
        eprintln!("xtask bench: the release build failed");
        return ExitCode::FAILURE;
    }
    let bin = root.join("target/release/qwen2");
    let mut reports = Vec::new();
    let mut runs = Vec::new();
    for b in &o.backends {
        for p in &o.precisions {
            for q in &o.quantize {
                runs.push((b, p, q));
            }
        }
    }
    for (backend, precision, quantize) in runs {
        {
            let label = quantize.as_deref().unwrap_or("as stored");
            eprintln!("xtask bench: {backend} / {precision} / weights {label} ...");
            let out = Command::new(&bin)
                .arg("bench")
                .arg("--model")
                .arg(&o.model)
                .args(["--backend", backend, "--precision", precision])
                .args(quantize.iter().flat_map(|q| ["--quantize", q.as_str()]))
                .args(&o.pass_through)
                .output();
            match out {
                Ok(out) if out.status.success() => {
                    match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                        Ok(v) => reports.push(v),
                        Err(e) => {
                            eprintln!("xtask bench: {backend}/{precision}: unreadable report: {e}")
                        }
                    }
                }
                Ok(out) => eprintln!(
                    "xtask bench: {backend}/{precision} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => eprintln!("xtask bench: cannot run {}: {e}", bin.display()),
            }
        }
    }
    if o.pytorch {
        reports.extend(pytorch_reports(root, &o));
    }
    if let Some(bin) = &o.llamacpp {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        match crate::bench_llamacpp::run(bin, &o.model, threads, &o.pass_through) {
            Ok(rows) => reports.extend(rows),
            Err(e) => eprintln!("xtask bench: llama.cpp: {e}"),
        }
    }
    if reports.is_empty() {
        return ExitCode::FAILURE;
    }
    let first = &reports[0];
    let (p0, d0) = (
        median(first, "prefill_tok_s"),
        median(first, "decode_tok_s"),
    );
    let r0 = &reports[0];
    println!(
        "Machine: {}, {} threads. Prompt {} tokens, {} generated, {} reps (median (min–max)).\n",
        cpu_model(),
        r0["threads"],
        r0["prompt_tokens"],
        r0["gen_tokens"],
        r0["reps"]
    );
    println!("| backend | precision | weights | load s | prefill tok/s | TTFT ms | decode tok/s | decode bound tok/s | peak RSS MB (÷ weights) | device MB reserved | prefill × | decode × |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &reports {
        // Peer rows carry only prefill and decode speeds.
        let num = |key: &str, scale: f64, digits: usize| {
            r[key]
                .as_f64()
                .map_or("–".to_string(), |v| format!("{:.*}", digits, v * scale))
        };
        let ttft = r["ttft_ms"]["median"]
            .as_f64()
            .map_or("–".to_string(), |v| format!("{v:.0}"));
        let peak = match (
            r["peak_rss_bytes"].as_f64(),
            r["peak_rss_over_weights"].as_f64(),
        ) {
            (Some(b), Some(x)) => format!("{:.0} ({x:.2}×)", b / 1e6),
            _ => "–".into(),
        };
        let device = r["device_memory"]["bytes_reserved"]
            .as_f64()
            .map_or("–".to_string(), |b| format!("{:.0}", b / 1e6));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} |",
            r["backend"].as_str().unwrap_or("?"),
            r["precision"].as_str().unwrap_or("?"),
            r["weights"].as_str().unwrap_or("–"),
            num("load_s", 1.0, 2),
            range(r, "prefill_tok_s"),
            ttft,
            range(r, "decode_tok_s"),
            num("decode_bound_tok_s", 1.0, 1),
            peak,
            device,
            median(r, "prefill_tok_s") / p0.max(1e-9),
            median(r, "decode_tok_s") / d0.max(1e-9),
        );
    }
    if let Some(path) = &o.json {
        let doc = serde_json::json!({ "machine": cpu_model(), "runs": reports });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
        {
            eprintln!("xtask bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// HF transformers on the same model and prompt, one JSON line per dtype from
/// scripts/bench_pytorch.py (`auto` and `f16-safe` have no PyTorch counterpart and are skipped).
fn pytorch_reports(root: &Path, o: &Options) -> Vec<serde_json::Value> {
    let dtypes: Vec<&str> = o
        .precisions
        .iter()
        .map(String::as_str)
        .filter(|p| matches!(*p, "f32" | "bf16" | "f16"))
        .collect();
    if dtypes.is_empty() {
        eprintln!("xtask bench: --pytorch needs --precision with f32, bf16 or f16");
        return Vec::new();
    }
    eprintln!("xtask bench: pytorch / {} ...", dtypes.join(","));
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .current_dir(root)
        .arg("scripts/bench_pytorch.py")
        .arg("--model")
        .arg(&o.model)
        .args(["--dtypes", &dtypes.join(",")])
        .args(&o.pass_through)
        .output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|mut v| {
                v["backend"] = serde_json::json!("pytorch");
                v
            })
            .collect(),
        Ok(out) => {
            eprintln!(
                "xtask bench: scripts/bench_pytorch.py failed (it needs torch and transformers): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Vec::new()
        }
        Err(e) => {
            eprintln!("xtask bench: cannot run {python}: {e} (set PYTHON to your interpreter)");
            Vec::new()
        }
    }
}

/// `cargo build --release -p qwen2-cli` with the features of `backends` (the CPU is built in).
pub fn build_release_cli(root: &Path, backends: &[String]) -> bool {
    let features: Vec<String> = backends
        .iter()
        .filter(|b| *b != "cpu")
        .map(|b| format!("qwen2-cli/{b}"))
        .collect();
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-p", "qwen2-cli"]);
    if !features.is_empty() {
        build.args(["--features", &features.join(",")]);
    }
    build.status().is_ok_and(|s| s.success())
}
