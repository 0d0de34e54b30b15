//! `qwen2`: run Qwen2 / Qwen2.5 models from a Hugging Face model directory.

mod args;
mod bench;
mod chart;
mod chat_cmds;
mod chat_input;
mod commands;
mod diagnose;
mod doctor;
mod finetune_cmd;
mod generate_cmd;
mod model_setup;
mod npy;
mod options;
mod quantize_cmd;
mod serve_cmd;
mod text_cmds;

use std::process::ExitCode;

use clap::Parser;

/// Exit code when a tensor went non-finite and no fallback was allowed.
const EXIT_NONFINITE: u8 = 3;

/// Keeps glibc from serving the per-token buffers (logits, activations: 0.1–32 MB) with fresh
/// `mmap`s: each would be zero-filled page by page and unmapped again, which cost ~15% of a
/// CPU decode step. Below 32 MB they now come from the heap and are reused.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

/// Lets a closed pipe (`qwen2 generate ... | head`) end the process quietly, as Unix tools do,
/// instead of a panic from `println!` on EPIPE.
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of SIGPIPE before any output or thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    default_sigpipe();
    tune_allocator();
    let cli = args::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("QWEN2_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if cli.verbose { "info" } else { "error" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1");
            return ExitCode::from(2);
        }
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
        {
            eprintln!("warning: --threads {n}: {e}");
        }
    }
    // The server keeps its HTTP runtime on this thread and runs its scheduler on the pool; every
    // other command runs on the pool whole (see `on_compute_pool`).
    if matches!(cli.command, args::Command::Serve(_)) {
        report(commands::run(cli))
    } else {
        qwen2_burn::core::engine::on_compute_pool(move || report(commands::run(cli)))
    }
}

/// The exit code of a command's result, with its error chain on stderr.
fn report(result: model_setup::CliResult) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            use qwen2_burn::train::TrainError;
            let nonfinite = e
                .downcast_ref::<qwen2_burn::core::Error>()
                .is_some_and(qwen2_burn::core::fallback::is_nonfinite)
                || e.downcast_ref::<TrainError>().is_some_and(|t| {
                    matches!(
                        t,
                        TrainError::NonFinite { .. }
                            | TrainError::NonFiniteForward { .. }
                            | TrainError::Diverged { .. }
                            | TrainError::Anomaly { .. }
                    )
                });
            ExitCode::from(if nonfinite { EXIT_NONFINITE } else { 1 })
        }
    }
}
