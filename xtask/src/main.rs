//! Project chores: `cargo xtask <command>`.
//!
//!   fixtures [--only NAME...]   regenerate tests/fixtures with HF transformers (needs Python with
//!                               torch, transformers, safetensors, numpy)
//!   gpu-check [--out FILE]      on a machine with an NVIDIA GPU: build with cuda+wgpu, print
//!                               `doctor`, run the conformance suite on CUDA for every policy,
//!                               a short decode benchmark per policy; report to FILE

use std::path::PathBuf;
use std::process::{Command, ExitCode};

mod gpu_check;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <command>\n\n\
         commands:\n  \
         fixtures [--only NAME...]  rebuild tests/fixtures with HF transformers (scripts/make_fixtures.py)\n  \
         gpu-check [--out FILE]     CUDA doctor + conformance + short benchmark (default report: gpu-check-report.md)\n\n\
         fixtures needs: pip install torch transformers safetensors numpy"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fixtures") => {
            let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
            let status = Command::new(&python)
                .current_dir(root())
                .arg("scripts/make_fixtures.py")
                .args(["--out", "tests/fixtures"])
                .args(&args[1..])
                .status();
            match status {
                Ok(s) if s.success() => ExitCode::SUCCESS,
                Ok(s) => {
                    eprintln!("xtask: scripts/make_fixtures.py failed ({s})");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("xtask: cannot run {python}: {e} (set PYTHON to your interpreter)");
                    ExitCode::FAILURE
                }
            }
        }
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
