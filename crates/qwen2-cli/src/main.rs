//! `qwen2`: run Qwen2 / Qwen2.5 models from a Hugging Face model directory.

mod args;
mod bench;
mod chart;
mod chat_cmds;
mod commands;
mod diagnose;
mod doctor;
mod npy;
mod options;
mod text_cmds;

use std::process::ExitCode;

use clap::Parser;

/// Exit code when a tensor went non-finite and no fallback was allowed.
const EXIT_NONFINITE: u8 = 3;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("QWEN2_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if cli.verbose { "info" } else { "error" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            let nonfinite = e
                .downcast_ref::<qwen2_burn::core::Error>()
                .is_some_and(qwen2_burn::core::fallback::is_nonfinite);
            ExitCode::from(if nonfinite { EXIT_NONFINITE } else { 1 })
        }
    }
}
