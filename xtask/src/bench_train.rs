//! `cargo xtask bench-train`: fine-tuning speed and memory of `qwen2 finetune` (release build,
//! one process per configuration) on synthetic records of a fixed length, with HF transformers
//! (+ peft) on the same data and settings (scripts/bench_train_pytorch.py) beside it.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

struct Options {
    model: PathBuf,
    lora: bool,
    precisions: Vec<String>,
    backends: Vec<String>,
    seq_len: usize,
    batch_size: usize,
    steps: usize,
    pytorch: bool,
    /// Also run ours on burn's generic graph and ops (`QWEN2_TRAIN_KERNELS=generic`).
    generic: bool,
    /// Also run ours on a quantized base (`finetune --lora --quantize TYPE`).
    quantize: Option<String>,
    /// Also run ours on this GGUF file of the model (`finetune --model FILE.gguf --lora`).
    gguf: Option<PathBuf>,
    json: Option<PathBuf>,
}

const USAGE: &str = "usage: cargo xtask bench-train --model DIR [--lora] [--precision f32,bf16] [--backend cpu] [--seq-len 256] [--batch-size 1] [--steps 5] [--pytorch] [--generic] [--quantize q4_k] [--gguf FILE] [--json FILE]";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        model: PathBuf::new(),
        lora: false,
        precisions: vec!["f32".into()],
        backends: vec!["cpu".into()],
        seq_len: 256,
        batch_size: 1,
        steps: 5,
        pytorch: false,
        generic: false,
        quantize: None,
        gguf: None,
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
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--model" => o.model = PathBuf::from(value()?),
            "--lora" => o.lora = true,
            "--precision" => o.precisions = list(value()?),
            "--backend" => o.backends = list(value()?),
            "--seq-len" => o.seq_len = number(value()?)?,
            "--batch-size" => o.batch_size = number(value()?)?,
            "--steps" => o.steps = number(value()?)?,
            "--pytorch" => o.pytorch = true,
            "--generic" => o.generic = true,
            "--quantize" => o.quantize = Some(value()?),
            "--gguf" => o.gguf = Some(PathBuf::from(value()?)),
            "--json" => o.json = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.model.as_os_str().is_empty() {
        return Err("--model DIR is required (e.g. `cargo xtask bench-model --out DIR`)".into());
    }
    if o.steps < 2 || o.seq_len < 2 || o.batch_size == 0 {
        return Err("--steps and --seq-len need at least 2, --batch-size at least 1".into());
    }
    Ok(o)
}

/// `steps × batch` records of `seq_len` ids drawn from the vocabulary (SplitMix64, seed 1),
/// every token labelled.
fn write_data(path: &Path, vocab: u64, o: &Options) -> std::io::Result<()> {
    let mut state = 1u64;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut text = String::new();
    for _ in 0..o.steps * o.batch_size {
        let ids: Vec<u64> = (0..o.seq_len).map(|_| next() % vocab).collect();
        text.push_str(&serde_json::json!({ "input_ids": ids }).to_string());
        text.push('\n');
    }
    std::fs::write(path, text)
}

/// Which of our runs: on the training kernels, on burn's generic graph, on a base quantized at
/// load, on a GGUF file's blocks.
enum Variant<'a> {
    Kernels,
    Generic,
    Quantized(&'a str),
    Gguf(&'a Path),
}

impl Variant<'_> {
    fn label(&self) -> String {
        match self {
            Variant::Kernels => String::new(),
            Variant::Generic => " (generic graph)".into(),
            Variant::Quantized(q) => format!(" (base in {q})"),
            Variant::Gguf(f) => {
                format!(" ({})", f.file_name().unwrap_or_default().to_string_lossy())
            }
        }
    }
}

fn run_ours(
    bin: &Path,
    data: &Path,
    work: &Path,
    o: &Options,
    backend: &str,
    precision: &str,
    variant: &Variant<'_>,
) -> Result<serde_json::Value, String> {
    let generic = matches!(variant, Variant::Generic);
    let quantize = match variant {
        Variant::Quantized(q) => Some(*q),
        _ => None,
    };
    let model = match variant {
        Variant::Gguf(file) => *file,
        _ => o.model.as_path(),
    };
    let out = work.join(format!("out-{backend}-{precision}"));
    let log = work.join(format!("log-{backend}-{precision}.jsonl"));
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new(bin);
    if generic {
        cmd.env("QWEN2_TRAIN_KERNELS", "generic");
    }
    cmd.arg("finetune")
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(&out)
        .arg("--json-log")
        .arg(&log)
        .args([
            "--backend",
            backend,
            "--precision",
            precision,
            "--lr",
            "2e-4",
        ])
        .args([
            "--steps",
            &o.steps.to_string(),
            "--batch-size",
            &o.batch_size.to_string(),
        ])
        .args(["--max-seq-len", &o.seq_len.to_string()]);
    if o.lora {
        cmd.arg("--lora");
    }
    if let Some(q) = quantize {
        cmd.args(["--quantize", q]);
    }
    let result = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !result.status.success() {
        return Err(String::from_utf8_lossy(&result.stderr).trim().to_string());
    }
    let text = std::fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let records: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut summary = records
        .iter()
        .find(|r| r["summary"] == true)
        .cloned()
        .ok_or("no summary record in the log")?;
    summary["engine"] = format!("qwen2-burn{}", variant.label()).into();
    summary["losses"] = records
        .iter()
        .filter_map(|r| r.get("loss").cloned())
        .collect();
    summary["peak_rss_mb"] = summary["peak_rss_bytes"]
        .as_f64()
        .map(|b| b / (1 << 20) as f64)
        .into();
    Ok(summary)
}

/// PyTorch in `precision`; bf16 both ways a PyTorch user trains it (autocast over f32 masters,
/// and the model loaded in bf16), keeping the faster.
fn run_pytorch(
    root: &Path,
    data: &Path,
    o: &Options,
    precision: &str,
) -> Result<serde_json::Value, String> {
    if precision != "bf16" {
        return run_pytorch_mode(root, data, o, precision, None);
    }
    let mut best: Option<serde_json::Value> = None;
    let mut errors = Vec::new();
    for mode in ["autocast", "load"] {
        eprintln!("xtask bench-train: pytorch / bf16 ({mode}) ...");
        match run_pytorch_mode(root, data, o, precision, Some(mode)) {
            Ok(v) => {
                let faster = best.as_ref().is_none_or(|b| {
                    v["tokens_per_s"].as_f64().unwrap_or(0.0)
                        > b["tokens_per_s"].as_f64().unwrap_or(0.0)
                });
                if faster {
                    best = Some(v);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    best.ok_or_else(|| errors.join("; "))
}

fn run_pytorch_mode(
    root: &Path,
    data: &Path,
    o: &Options,
    precision: &str,
    bf16_mode: Option<&str>,
) -> Result<serde_json::Value, String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut cmd = Command::new(&python);
    cmd.current_dir(root)
        .arg("scripts/bench_train_pytorch.py")
        .arg("--model")
        .arg(&o.model)
        .arg("--data")
        .arg(data)
        .args([
            "--steps",
            &o.steps.to_string(),
            "--batch-size",
            &o.batch_size.to_string(),
        ])
        .args(["--precision", precision, "--lr", "2e-4"]);
    if let Some(mode) = bf16_mode {
        cmd.args(["--bf16-mode", mode]);
    }
    if o.lora {
        cmd.arg("--lora");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/bench_train_pytorch.py failed (it needs torch, transformers, peft): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let mut v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    v["backend"] = "pytorch".into();
    Ok(v)
}

/// The SIMD features that decide the kernels' speed, as the CPU reports them.
fn cpu_flags() -> String {
    let mut flags = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx512bw", std::arch::is_x86_feature_detected!("avx512bw")),
            (
                "avx512vnni",
                std::arch::is_x86_feature_detected!("avx512vnni"),
            ),
            (
                "avx512bf16",
                std::arch::is_x86_feature_detected!("avx512bf16"),
            ),
            (
                "avx512fp16",
                std::arch::is_x86_feature_detected!("avx512fp16"),
            ),
        ] {
            if on {
                flags.push(name);
            }
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{threads} threads, {}", flags.join(" "))
}

pub fn run(root: &Path, args: &[String]) -> ExitCode {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("xtask bench-train: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let vocab = std::fs::read_to_string(o.model.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|c| c["vocab_size"].as_u64());
    let Some(vocab) = vocab else {
        eprintln!(
            "xtask bench-train: {} has no readable config.json with vocab_size",
            o.model.display()
        );
        return ExitCode::FAILURE;
    };
    let work = std::env::temp_dir().join(format!("qwen2-bench-train-{}", std::process::id()));
    let data = work.join("data.jsonl");
    if let Err(e) = std::fs::create_dir_all(&work).and_then(|_| write_data(&data, vocab, &o)) {
        eprintln!("xtask bench-train: cannot write {}: {e}", data.display());
        return ExitCode::FAILURE;
    }
    eprintln!("xtask bench-train: building the release CLI");
    if !super::bench::build_release_cli(root, &o.backends) {
        eprintln!("xtask bench-train: the release build failed");
        return ExitCode::FAILURE;
    }
    let bin = root.join("target/release/qwen2");
    let mut rows = Vec::new();
    for backend in &o.backends {
        for precision in &o.precisions {
            let mut variants = vec![Variant::Kernels];
            if o.generic {
                variants.push(Variant::Generic);
            }
            if let Some(q) = o.quantize.as_deref() {
                variants.push(Variant::Quantized(q));
            }
            if let Some(file) = o.gguf.as_deref() {
                variants.push(Variant::Gguf(file));
            }
            for variant in &variants {
                let what = variant.label();
                eprintln!("xtask bench-train: qwen2-burn{what} {backend} / {precision} ...");
                match run_ours(&bin, &data, &work, &o, backend, precision, variant) {
                    Ok(v) => rows.push(v),
                    Err(e) => {
                        eprintln!("xtask bench-train: {backend}/{precision}{what} failed: {e}")
                    }
                }
            }
        }
    }
    if o.pytorch {
        for precision in o
            .precisions
            .iter()
            .filter(|p| matches!(p.as_str(), "f32" | "bf16"))
        {
            eprintln!("xtask bench-train: pytorch / {precision} ...");
            match run_pytorch(root, &data, &o, precision) {
                Ok(v) => rows.push(v),
                Err(e) => eprintln!("xtask bench-train: {e}"),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    if rows.is_empty() {
        return ExitCode::FAILURE;
    }
    println!(
        "Machine: {} ({}). {} fine-tuning, {} records × {} tokens per step, {} steps (median over steps 2..; min–max).\n",
        super::bench::cpu_model(),
        cpu_flags(),
        if o.lora { "LoRA (r 8, 7 projections)" } else { "full" },
        o.batch_size,
        o.seq_len,
        o.steps
    );
    println!("| engine | backend | precision | tokens/s | step s | peak RSS MB | × PyTorch (same precision) |");
    println!("|---|---|---|---|---|---|---|");
    let tps = |r: &serde_json::Value| r["tokens_per_s"].as_f64().unwrap_or(0.0);
    for r in &rows {
        let precision = r["precision"].as_str().unwrap_or("?");
        let anchor = rows
            .iter()
            .find(|p| p["backend"] == "pytorch" && p["precision"] == precision)
            .map(tps);
        let engine = match (r["engine"].as_str(), r["bf16_mode"].as_str()) {
            (Some(e), Some(mode)) => format!("{e} ({mode}, {})", r["attn"].as_str().unwrap_or("?")),
            (Some("pytorch"), None) => format!("pytorch ({})", r["attn"].as_str().unwrap_or("?")),
            (Some(e), None) => e.to_string(),
            _ => "?".into(),
        };
        println!(
            "| {} | {} | {} | {:.0} ({:.0}–{:.0}) | {:.3} | {:.0} | {} |",
            engine,
            r["backend"].as_str().unwrap_or("?"),
            precision,
            tps(r),
            r["tokens_per_s_min"].as_f64().unwrap_or(0.0),
            r["tokens_per_s_max"].as_f64().unwrap_or(0.0),
            (o.batch_size * o.seq_len) as f64 / tps(r).max(1e-9),
            r["peak_rss_mb"].as_f64().unwrap_or(0.0),
            anchor.map_or("–".into(), |a| format!("{:.2}", tps(r) / a.max(1e-9))),
        );
    }
    if let Some(path) = &o.json {
        let doc = serde_json::json!({ "machine": super::bench::cpu_model(), "runs": rows });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap_or_default())
        {
            eprintln!("xtask bench-train: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
