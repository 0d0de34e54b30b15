//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run Qwen2 / Qwen2.5 language models from a Hugging Face model directory
/// (config.json + model.safetensors, or sharded safetensors with an index).
#[derive(Parser, Debug)]
#[command(name = "qwen2", version)]
#[command(after_help = "Examples:\n  \
    qwen2 generate --model tests/fixtures/untied-bf16-mqa --ids 1,2,3 --max-new-tokens 8\n  \
    qwen2 logits --model tests/fixtures/tied-f32-gqa --ids 1,2,3 --out logits.npy\n\n\
    Set QWEN2_LOG=debug (or pass --verbose) for load progress and timings.")]
pub struct Cli {
    /// Log load progress and decisions to stderr.
    #[arg(long, short, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the logits of a forward pass over token ids to a float32 .npy file.
    Logits(LogitsArgs),
    /// Generate token ids after a prompt of token ids (greedy by default).
    Generate(GenerateArgs),
    /// Run every precision policy the device can run against f32: where each overflows, how far
    /// its logits drift, and the per-layer peak activations against the f16/bf16 limits.
    Diagnose(DiagnoseArgs),
    /// List the compiled backends, their devices, what the hardware probe found, and the
    /// precision plan `--precision auto` picks there, with the rule and reason.
    Doctor(DoctorArgs),
}

/// `qwen2 doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What to do when a tensor goes non-finite (inf or NaN).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnNonFinite {
    /// Stop with an error naming the first op that overflowed (exit code 3).
    Error,
    /// Re-run with the next safer plan of the backend's fallback chain and say so.
    Fallback,
}

/// Options shared by every command that loads a model.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Model directory (config.json and *.safetensors).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Compute backend among those compiled in; `auto` picks CUDA if it has a device, then a hardware wgpu adapter, then the CPU.
    #[arg(long, default_value = "auto", value_name = "auto|cpu|wgpu|cuda")]
    pub backend: String,

    /// Precision policy: which dtype each operation runs in. `auto` lets the backend's table
    /// pick for the probed hardware; f16 is the naive plan that overflows on massive activations.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|f32|bf16|f16-safe|f16"
    )]
    pub precision: String,

    /// On inf/NaN: `error` (exit code 3) or `fallback` to a safer plan.
    /// Default: fallback with --precision auto, error otherwise.
    #[arg(long, value_enum)]
    pub on_nonfinite: Option<OnNonFinite>,

    /// Prompt token ids, comma-separated (e.g. 9707,11,1879).
    #[arg(long, value_name = "IDS", value_delimiter = ',', required = true, num_args = 1..)]
    pub ids: Vec<u32>,
}

/// `qwen2 logits`.
#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Output file: float32 little-endian .npy, shape [vocab] (last position) or
    /// [positions, vocab] with --all-positions.
    #[arg(long, value_name = "FILE.npy")]
    pub out: PathBuf,

    /// Write logits for every prompt position instead of only the last one.
    #[arg(long)]
    pub all_positions: bool,
}

/// `qwen2 generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Number of tokens to generate at most.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,

    /// Sampling temperature; 0 means greedy (always the most likely token).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,

    /// Seed for sampling when --temperature > 0 (same seed, same output).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Stop at these token ids (comma-separated); defaults to config.json's eos_token_id.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub eos: Option<Vec<u32>>,

    /// Print one JSON object (ids, prompt_tokens, generated_tokens, timings) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `qwen2 diagnose`.
#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    /// Model directory (config.json and *.safetensors).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Compute backend among those compiled in; `auto` picks CUDA if it has a device, then a hardware wgpu adapter, then the CPU.
    #[arg(long, default_value = "auto", value_name = "auto|cpu|wgpu|cuda")]
    pub backend: String,

    /// Prompt token ids, comma-separated.
    #[arg(long, value_name = "IDS", value_delimiter = ',', required = true, num_args = 1..)]
    pub ids: Vec<u32>,

    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,

    /// Also draw per-layer peak |activation| per policy, with the f16 limit, to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
}
