//! Project chores: `cargo xtask <command>`.
//!
//!   fixtures [--only NAME...]   regenerate tests/fixtures with HF transformers (needs Python with
//!                               torch, transformers, safetensors, numpy)
//!   bench --model DIR [...]     release-build the CLI, run `qwen2 bench` per backend × precision
//!                               × --quantize (HF transformers with --pytorch, llama.cpp's
//!                               llama-bench on a GGUF with --llamacpp BIN),
//!                               print a markdown table (see `cargo xtask bench` for options)
//!   bench-model --out DIR       a Qwen2-0.5B-shaped random bf16 model (~1 GB) for benchmarks
//!   bench-train --model DIR     fine-tuning tokens/s and peak memory per precision (and
//!                               HF transformers + peft with --pytorch)
//!   bench-serve --model DIR     `qwen2 serve` aggregate tokens/s, time to first token and
//!                               inter-token latency at 1, 4, 8 concurrent streaming clients
//!   gpu-check [--out FILE]      on a machine with an NVIDIA GPU: build with cuda+wgpu, print
//!                               `doctor`, run the conformance suite on CUDA for every policy,
//!                               a short decode benchmark per policy; report to FILE

use std::path::PathBuf;
use std::process::{Command, ExitCode};

mod bench;
mod bench_llamacpp;
mod bench_serve;
mod bench_train;
mod gpu_check;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <command>\n\n\
         commands:\n  \
         fixtures [--only NAME...]  rebuild tests/fixtures with HF transformers (scripts/make_fixtures.py,\n                             scripts/make_text_fixtures.py, make_train_fixtures.py, make_f16_train_fixtures.py,\n                             make_peft_interop_fixture.sh)\n  \
         bench --model DIR|FILE.gguf [--backend cpu,wgpu] [--precision auto,f32,bf16] [--quantize q8_0,q4_k,none] [--prompt-len 128] [--gen 32] [--reps 5] [--ids FILE] [--json FILE] [--pytorch] [--llamacpp LLAMA_BENCH]\n  \
         bench-model --out DIR      Qwen2-0.5B-shaped random bf16 model for benchmarks (~1 GB)\n  \
         bench-train --model DIR [--lora] [--precision f32,bf16] [--seq-len 256] [--batch-size 1] [--steps 5] [--pytorch] [--json FILE]\n  \
         bench-serve --model DIR [--clients 1,4,8] [--prompt-len 128] [--gen 64] [--rounds 2] [--precision auto] [--json FILE]\n  \
         gpu-check [--out FILE]     CUDA doctor + conformance + short benchmark (default report: gpu-check-report.md)\n\n\
         fixtures needs: pip install torch transformers tokenizers peft safetensors numpy, and npm"
    );
    ExitCode::from(2)
}

/// Runs a script of `scripts/` with `$PYTHON` (default `python3`) from the repository root.
fn run_python(script: &str, args: &[&str], needs: &str) -> ExitCode {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&python)
        .current_dir(root())
        .arg(script)
        .args(args)
        .status()
    {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("xtask: {script} failed ({s}; it {needs})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xtask: cannot run {python}: {e} (set PYTHON to your interpreter)");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fixtures") => {
            let fixture_args: Vec<&str> = args[1..].iter().map(String::as_str).collect();
            let model_fixtures = run_python(
                "scripts/make_fixtures.py",
                &[&["--out", "tests/fixtures"], &fixture_args[..]].concat(),
                "needs torch, transformers, safetensors, numpy",
            );
            if model_fixtures != ExitCode::SUCCESS {
                return model_fixtures;
            }
            // Tokenizers, chat templates and sampling goldens (needs tiny-chat from the first).
            let text = run_python(
                "scripts/make_text_fixtures.py",
                &["--out", "tests/fixtures"],
                "needs torch, transformers, tokenizers and npm",
            );
            if text != ExitCode::SUCCESS {
                return text;
            }
            // Fine-tuning goldens (torch, transformers, peft), then the peft interop adapter.
            let train = run_python(
                "scripts/make_train_fixtures.py",
                &["--out", "tests/fixtures"],
                "needs torch, transformers, peft",
            );
            if train != ExitCode::SUCCESS {
                return train;
            }
            let f16 = run_python(
                "scripts/make_f16_train_fixtures.py",
                &["--out", "tests/fixtures"],
                "needs torch, transformers",
            );
            if f16 != ExitCode::SUCCESS {
                return f16;
            }
            match Command::new("bash")
                .current_dir(root())
                .arg("scripts/make_peft_interop_fixture.sh")
                .status()
            {
                Ok(s) if s.success() => ExitCode::SUCCESS,
                other => {
                    eprintln!("xtask: scripts/make_peft_interop_fixture.sh failed ({other:?}; it needs peft)");
                    ExitCode::FAILURE
                }
            }
        }
        Some("bench") => bench::run(&root(), &args[1..]),
        Some("bench-train") => bench_train::run(&root(), &args[1..]),
        Some("bench-serve") => bench_serve::run(&root(), &args[1..]),
        Some("bench-model") => match (args.get(1).map(String::as_str), args.get(2)) {
            (Some("--out"), Some(dir)) => run_python(
                "scripts/make_bench_model.py",
                &["--out", dir],
                "needs torch, transformers, safetensors",
            ),
            _ => {
                eprintln!("usage: cargo xtask bench-model --out DIR");
                ExitCode::from(2)
            }
        },
        Some("gpu-check") => {
            let out = match args.get(1).map(String::as_str) {
                Some("--out") => args.get(2).map(PathBuf::from),
                _ => None,
            }
            .unwrap_or_else(|| root().join("gpu-check-report.md"));
            gpu_check::run(&root(), &out)
        }
        _ => usage(),
    }
}
