//! `cargo xtask bench`: builds the CLI in release mode, runs `qwen2 bench` once per backend and
//! precision (a fresh process each, so peak memory is per configuration) and prints a markdown
//! table with ratios to the first configuration; optionally writes all of it as JSON.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

struct Options {
    model: PathBuf,
    backends: Vec<String>,
    precisions: Vec<String>,
    pass_through: Vec<String>,
    json: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        model: PathBuf::new(),
        backends: vec!["cpu".into()],
        precisions: vec!["auto".into()],
        pass_through: Vec::new(),
        json: None,
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
            "--prompt-len" | "--gen" | "--reps" | "--ids" => {
                o.pass_through.push(flag.clone());
                o.pass_through.push(value()?);
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.model.as_os_str().is_empty() {
        return Err(
            "--model DIR is required (make one with `cargo xtask bench-model --out DIR`)".into(),
        );
    }
    Ok(o)
}

fn cpu_model() -> String {
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
            eprintln!("xtask bench: {e}\nusage: cargo xtask bench --model DIR [--backend cpu,wgpu,cuda] [--precision auto,f32,bf16,...] [--prompt-len 128] [--gen 32] [--reps 5] [--ids FILE] [--json FILE]");
            return ExitCode::from(2);
        }
    };
    let features: Vec<String> = o
        .backends
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
    eprintln!(
        "xtask bench: building the release CLI ({})",
        o.backends.join(", ")
    );
    if !build.status().is_ok_and(|s| s.success()) {
        eprintln!("xtask bench: the release build failed");
        return ExitCode::FAILURE;
    }
    let bin = root.join("target/release/qwen2");
    let mut reports = Vec::new();
    for backend in &o.backends {
        for precision in &o.precisions {
            eprintln!("xtask bench: {backend} / {precision} ...");
            let out = Command::new(&bin)
                .arg("bench")
                .arg("--model")
                .arg(&o.model)
                .args(["--backend", backend, "--precision", precision])
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
    println!("| backend | precision | load s | prefill tok/s | TTFT ms | decode tok/s | decode bound tok/s | peak RSS MB (÷ weights) | prefill × | decode × |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &reports {
        println!(
            "| {} | {} | {:.2} | {} | {:.0} | {} | {:.1} | {:.0} ({:.2}×) | {:.2} | {:.2} |",
            r["backend"].as_str().unwrap_or("?"),
            r["precision"].as_str().unwrap_or("?"),
            r["load_s"].as_f64().unwrap_or(0.0),
            range(r, "prefill_tok_s"),
            median(r, "ttft_ms"),
            range(r, "decode_tok_s"),
            r["decode_bound_tok_s"].as_f64().unwrap_or(0.0),
            r["peak_rss_bytes"].as_f64().unwrap_or(0.0) / 1e6,
            r["peak_rss_over_weights"].as_f64().unwrap_or(0.0),
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
