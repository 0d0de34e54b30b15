//! `cargo xtask gpu-check`: the one script to run on a lent GPU machine (no network needed).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

const FEATURES: &str = "qwen2-burn/cuda,qwen2-burn/wgpu,qwen2-cli/cuda,qwen2-cli/wgpu";
const BENCH_FIXTURE: &str = "tests/fixtures/untied-bf16-mqa";

/// Runs one step, appends its command, duration and output to the report.
fn step(report: &mut String, root: &Path, title: &str, program: &str, args: &[&str]) -> bool {
    eprintln!("== {title}");
    let start = Instant::now();
    let out = Command::new(program).args(args).current_dir(root).output();
    let secs = start.elapsed().as_secs_f64();
    let _ = writeln!(
        report,
        "## {title}\n\n`{program} {}` ({secs:.1} s)\n",
        args.join(" ")
    );
    match out {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let tail: String = text
                .lines()
                .rev()
                .take(80)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            let _ = writeln!(report, "exit: {}\n\n```\n{tail}\n```\n", o.status);
            eprintln!("{tail}");
            o.status.success()
        }
        Err(e) => {
            let _ = writeln!(report, "could not run: {e}\n");
            false
        }
    }
}

pub fn run(root: &Path, out: &Path) -> ExitCode {
    let mut report = String::from("# qwen2-burn GPU check\n\n");
    let mut ok = true;
    ok &= step(
        &mut report,
        root,
        "build (cuda + wgpu)",
        "cargo",
        &["build", "-p", "qwen2-cli", "--features", FEATURES],
    );
    let qwen2 = root.join("target/debug/qwen2");
    let qwen2 = qwen2.to_str().unwrap_or("target/debug/qwen2");
    ok &= step(&mut report, root, "doctor", qwen2, &["doctor"]);
    ok &= step(
        &mut report,
        root,
        "conformance on CUDA (every fixture x every policy the GPU runs)",
        "cargo",
        &[
            "test",
            "--features",
            FEATURES,
            "--test",
            "backend_conformance",
            "--",
            "--test-threads",
            "1",
            "--nocapture",
            "cuda",
        ],
    );
    let ids: Vec<String> = (1..=64).map(|i| (i * 3 % 320).to_string()).collect();
    let ids = ids.join(",");
    for policy in ["f32", "bf16", "f16-safe", "f16", "auto"] {
        // f16 may legitimately refuse (exit 3) on a fixture without massive activations it won't
        step(
            &mut report,
            root,
            &format!("benchmark: cuda, --precision {policy}, 64-token prompt, 128 new tokens"),
            qwen2,
            &[
                "generate",
                "--backend",
                "cuda",
                "--model",
                BENCH_FIXTURE,
                "--ids",
                &ids,
                "--max-new-tokens",
                "128",
                "--precision",
                policy,
                "--json",
            ],
        );
    }
    if let Err(e) = std::fs::write(out, &report) {
        eprintln!("cannot write {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("report written to {}", out.display());
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
