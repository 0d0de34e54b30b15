//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run Qwen2 / Qwen2.5 language models from a Hugging Face model directory
/// (config.json + model.safetensors, or sharded safetensors with an index).
#[derive(Parser, Debug)]
#[command(name = "qwen2", version)]
#[command(after_help = "Examples:\n  \
    qwen2 run --model ~/models/Qwen2.5-0.5B-Instruct --prompt \"Why is the sky blue?\"\n  \
    qwen2 chat --model ~/models/Qwen2.5-0.5B-Instruct --system \"You are terse.\"\n  \
    qwen2 generate --model tests/fixtures/untied-bf16-mqa --ids 1,2,3 --max-new-tokens 8\n  \
    qwen2 tokenize --model tests/fixtures/tiny-chat --text \"Hello, world!\" --json\n  \
    qwen2 logits --model tests/fixtures/tied-f32-gqa --ids 1,2,3 --out logits.npy\n\n\
    Set QWEN2_LOG=debug (or pass --verbose) for load progress and timings.")]
pub struct Cli {
    /// Log load progress and decisions to stderr.
    #[arg(long, short, global = true)]
    pub verbose: bool,

    /// Threads for the CPU work (the rayon pool) [default: one per core].
    #[arg(long, short = 't', global = true, value_name = "N")]
    pub threads: Option<usize>,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write the logits of a forward pass over token ids to a float32 .npy file.
    Logits(LogitsArgs),
    /// Generate after a prompt given as token ids (--ids) or raw text (--prompt, no chat
    /// template); sampling defaults come from generation_config.json.
    Generate(GenerateArgs),
    /// Answer one prompt with the model's chat template, streaming the reply.
    Run(RunArgs),
    /// Interactive multi-turn chat (the KV cache is kept across turns). Type /reset to start
    /// over, /exit or Ctrl-D to quit.
    Chat(ChatArgs),
    /// Print the token ids of a text.
    Tokenize(TokenizeArgs),
    /// Print the text of token ids.
    Detokenize(DetokenizeArgs),
    /// Measure load time, prefill and decode speed, time to first token and peak memory for
    /// one backend and precision; prints one JSON line (`cargo xtask bench` compares several).
    Bench(BenchArgs),
    /// Run every precision policy the device can run against f32: where each overflows, how far
    /// its logits drift, and the per-layer peak activations against the f16/bf16 limits.
    Diagnose(DiagnoseArgs),
    /// Fine-tune the model (full or LoRA) on a JSONL file of chats, texts or token ids;
    /// writes an HF model directory or a PEFT adapter.
    Finetune(Box<FinetuneArgs>),
    /// Fold a LoRA adapter into its base model and write an HF model directory.
    Merge(MergeArgs),
    /// Serve the model over HTTP with OpenAI's API (/v1/chat/completions, /v1/completions,
    /// /v1/models, /health, /metrics, /tokenize, /detokenize), batching concurrent requests.
    Serve(Box<crate::serve_cmd::ServeArgs>),
    /// List the compiled backends, their devices, what the hardware probe found, and the
    /// precision plan `--precision auto` picks there, with the rule and reason.
    Doctor(DoctorArgs),
    /// Write the model as a quantized GGUF file (q8_0, q4_0, q4_k_m, q6_k) for llama.cpp and
    /// this engine, reporting each tensor's relative quantization error.
    Quantize(crate::quantize_cmd::QuantizeArgs),
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
    /// Model directory (config.json and *.safetensors), or a GGUF model (FILE.gguf, the first
    /// shard NAME-00001-of-0000N.gguf, or a directory holding one). On the CPU a GGUF's
    /// quantized weights stay quantized; other backends dequantize them at load.
    #[arg(long, short = 'm', value_name = "DIR|GGUF")]
    pub model: PathBuf,

    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, as
    /// `qwen2 finetune --lora` or HF peft write it) applied on top of the model.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,

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

    /// KV cache capacity in positions (prompt + reply), at most the model's context
    /// [default: the model's context length]. Smaller means less memory; longer sequences end
    /// with finish reason `length`.
    #[arg(long, short = 'c', value_name = "N")]
    pub ctx_size: Option<usize>,

    /// Hold the projection weights quantized in memory (CPU backend): q8_0, q4_0, q4_k or q6_k
    /// quantize a checkpoint's projections at load (embeddings and norms stay as they are; the
    /// output head gets q6_k, as llama.cpp gives it; matrices whose rows are not whole blocks
    /// take llama.cpp's fallback type). `none` dequantizes a GGUF model at load instead of
    /// keeping its quantized weights [default: keep a GGUF's weights as stored].
    #[arg(long, value_name = "q8_0|q4_0|q4_k|q6_k|none")]
    pub quantize: Option<String>,
}

/// Token selection and stopping; unset options take generation_config.json's values.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Tokens to generate at most [default: generation_config.json's max_new_tokens, else 32
    /// for generate and 512 for run/chat].
    #[arg(long, short = 'n')]
    pub max_new_tokens: Option<usize>,

    /// Sampling temperature; 0 means greedy (always the most likely token)
    /// [default: generation_config.json, greedy when it has no do_sample: true].
    #[arg(long)]
    pub temperature: Option<f32>,

    /// Sample only among the K most likely tokens (0 = off).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,

    /// Sample among the most likely tokens whose probabilities add up to P (1 = off).
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,

    /// Drop tokens less likely than P times the most likely one (0 = off).
    #[arg(long, value_name = "P")]
    pub min_p: Option<f32>,

    /// Penalize tokens already in the sequence (HF semantics; 1 = off).
    #[arg(long, value_name = "X")]
    pub repetition_penalty: Option<f32>,

    /// Seed of the sampler: the same seed and settings give the same output [default: a fresh
    /// seed per run, shown with --verbose and in --json].
    #[arg(long, short = 's')]
    pub seed: Option<u64>,

    /// Stop at these token ids (comma-separated) [default: generation_config.json's
    /// eos_token_id, else config.json's].
    #[arg(long, value_delimiter = ',', value_name = "IDS", value_parser = parse_id)]
    pub eos: Option<Vec<u32>>,

    /// Stop when the text contains this string (repeatable; needs a tokenizer).
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
}

/// `qwen2 logits`.
#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Prompt token ids, comma-separated (e.g. 9707,11,1879).
    #[arg(long, value_name = "IDS", value_delimiter = ',', value_parser = parse_id, required = true, num_args = 1..)]
    pub ids: Vec<u32>,

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

    /// Prompt token ids, comma-separated (e.g. 9707,11,1879); output is ids.
    #[arg(long, value_name = "IDS", value_delimiter = ',', value_parser = parse_id, num_args = 1.., conflicts_with_all = ["prompt", "prompt_file", "text"])]
    pub ids: Vec<u32>,

    #[command(flatten)]
    pub prompt: PromptArgs,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// Print one JSON object (ids, prompt_tokens, generated_tokens, timings; text with --prompt)
    /// instead of streaming.
    #[arg(long)]
    pub json: bool,
}

/// `qwen2 run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub prompt: PromptArgs,

    /// A system message before it (default: whatever the chat template puts there).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// Print one JSON object (reply text, ids, timings) instead of streaming.
    #[arg(long)]
    pub json: bool,
}

/// `qwen2 chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// A system message that starts the conversation (kept across /reset).
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,

    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Where a tokenizer comes from.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct TokenizerSource {
    /// Model directory holding tokenizer.json, or a GGUF model.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,

    /// A tokenizer.json file (or tokenizer.json.gz).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
}

/// `qwen2 tokenize`.
#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub source: TokenizerSource,

    /// The text; special tokens written in it (<|im_start|>) become their ids.
    #[arg(long, value_name = "TEXT")]
    pub text: String,

    /// Print {"ids": [...]} instead of comma-separated ids.
    #[arg(long)]
    pub json: bool,
}

/// `qwen2 detokenize`.
#[derive(Args, Debug)]
pub struct DetokenizeArgs {
    #[command(flatten)]
    pub source: TokenizerSource,

    /// Token ids, comma-separated.
    #[arg(long, value_name = "IDS", value_delimiter = ',', value_parser = parse_id, required = true, num_args = 1..)]
    pub ids: Vec<u32>,

    /// Leave special tokens (<|im_end|>, ...) out of the text.
    #[arg(long)]
    pub skip_special: bool,

    /// Print {"text": "..."} instead of the bare text.
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
    #[arg(long, value_name = "IDS", value_delimiter = ',', value_parser = parse_id, required = true, num_args = 1..)]
    pub ids: Vec<u32>,

    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,

    /// Also draw per-layer peak |activation| per policy, with the f16 limit, to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
}

/// `qwen2 bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Prompt length in tokens (ignored with --ids).
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,

    /// A file of prompt token ids (comma, space or newline separated), to run the same prompt
    /// as another engine.
    #[arg(long, value_name = "FILE")]
    pub ids: Option<PathBuf>,

    /// Tokens to generate per repetition (greedy, with the KV cache).
    #[arg(long, default_value_t = 32)]
    pub gen: usize,

    /// Measured repetitions after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
}

/// `qwen2 finetune`.
#[derive(Args, Debug)]
#[command(after_help = "Data (JSONL, one record per line):\n  \
    {\"messages\": [{\"role\": \"user\", \"content\": \"...\"}, {\"role\": \"assistant\", \"content\": \"...\"}]}  loss on assistant turns\n  \
    {\"text\": \"...\"}                                   loss on every token\n  \
    {\"input_ids\": [...], \"labels\": [...]}            pre-tokenized; label -100 = no loss\n\n\
    Ctrl-C saves a checkpoint and stops; --resume OUT continues exactly where it stopped.")]
pub struct FinetuneArgs {
    /// Base model directory (config.json, *.safetensors, tokenizer.json for text data).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Training data, JSONL.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Output directory: the adapter (with --lora) or the model, and checkpoints/.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Train LoRA adapters instead of every weight.
    #[arg(long)]
    pub lora: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    /// LoRA alpha (scale = alpha / r).
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Dropout on the adapters' input (seeded).
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Projections to adapt (q,k,v,o,gate,up,down or their *_proj names; lm_head on untied models).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    )]
    pub lora_targets: Vec<String>,
    /// Start the LoRA adapters from this PEFT adapter directory instead of a fresh init.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// LoRA on a quantized base (QLoRA-style, CPU backend): hold the frozen projections
    /// quantized to q8_0, q4_0, q4_k or q6_k (as `run --quantize` does) and train the f32
    /// adapters through them; needs --lora.
    #[arg(long, value_name = "q8_0|q4_0|q4_k|q6_k")]
    pub quantize: Option<String>,
    /// Training precision: f32; bf16 compute; f16-scaled (f16 compute under the f16-safe plan
    /// with dynamic loss scaling); f16 (naive, no scaling: reproduces the overflow). Master
    /// weights and optimizer state are f32 in every policy. auto = f32.
    #[arg(
        long,
        default_value = "auto",
        value_name = "auto|f32|bf16|f16-scaled|f16"
    )]
    pub precision: String,
    /// f16-scaled: the starting loss scale (torch GradScaler's init_scale).
    #[arg(long, default_value_t = 65536.0)]
    pub loss_scale_init: f64,
    /// f16-scaled: good steps in a row before the scale doubles.
    #[arg(long, default_value_t = 2000)]
    pub loss_scale_growth_interval: usize,
    /// f16-scaled: the scale's growth factor.
    #[arg(long, default_value_t = 2.0)]
    pub loss_scale_growth_factor: f64,
    /// f16-scaled: the scale's factor after an overflow.
    #[arg(long, default_value_t = 0.5)]
    pub loss_scale_backoff: f64,
    /// Stop (exit 3) after this many overflowing steps in a row.
    #[arg(long, default_value_t = 20)]
    pub max_skipped_steps: usize,
    /// Stop (exit 3) when the loss scale falls below this.
    #[arg(long, default_value_t = 1.0)]
    pub min_loss_scale: f64,
    /// On a non-finite loss or a diverging loss scale: `error` (exit code 3) or `fallback`
    /// to the next safer policy (f16 → f16-scaled → f32, bf16 → f32) from the last good state.
    /// Default: fallback with --precision auto, error otherwise.
    #[arg(long, value_enum)]
    pub on_nonfinite: Option<OnNonFinite>,
    /// Train nothing: run one forward + backward per training policy the device computes on
    /// the first micro-batch and print, per layer, peak |activation| and |gradient| against
    /// the f16 range, the share of gradients that underflow in f16, and which policies stay
    /// finite.
    #[arg(long)]
    pub dry_run: bool,
    /// Check the gradient at every module of the backward pass and stop (exit 3) at the first
    /// inf/NaN, naming the module (like torch.autograd.detect_anomaly); costs nothing when off.
    #[arg(long)]
    pub detect_anomaly: bool,
    /// Optimizer steps to run [default: one epoch].
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<usize>,
    /// Passes over the data.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Records per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Learning-rate schedule after the warm-up (HF formulas).
    #[arg(long, default_value = "cosine", value_name = "constant|linear|cosine")]
    pub lr_schedule: String,
    /// Steps of linear warm-up from 0.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay (betas 0.9/0.999, eps 1e-8 as in PyTorch).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Truncate records to this many tokens [default: min(1024, the model's context)].
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Seed of shuffling, adapter init and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Shuffle the records every epoch (seeded).
    #[arg(long)]
    pub shuffle: bool,
    /// Evaluation data, JSONL (evaluated every --eval-every steps and at the end).
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
    /// Evaluate every N steps (0 = only at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Save a checkpoint every N steps (0 = only on Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Continue from a checkpoint (a checkpoint directory, or an --out directory: its newest).
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// dtype of the saved model after full fine-tuning [default: the base checkpoint's].
    #[arg(long, value_name = "f32|bf16|f16")]
    pub save_dtype: Option<String>,
    /// Compute backend (auto, cpu, wgpu, cuda).
    #[arg(long, default_value = "auto", value_name = "auto|cpu|wgpu|cuda")]
    pub backend: String,
    /// Append one JSON object per optimizer step (step, loss, lr, grad_norm, tokens, seconds,
    /// ...) and per evaluation (eval_loss) to FILE.
    #[arg(long, value_name = "FILE")]
    pub json_log: Option<PathBuf>,
}

/// `qwen2 merge`.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Base model directory.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// PEFT LoRA adapter directory.
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// Output HF model directory.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// dtype of the merged weights [default: the base checkpoint's].
    #[arg(long, value_name = "f32|bf16|f16")]
    pub save_dtype: Option<String>,
}

/// A token id; spaces around it are allowed (`--ids "1, 2, 3"`).
fn parse_id(s: &str) -> Result<u32, String> {
    s.trim().parse().map_err(|_| {
        format!(
            "'{}' is not a token id (a number from 0 to 4294967295)",
            s.trim()
        )
    })
}

/// Where a text prompt comes from: `--prompt`, `--prompt-file` (`-` = stdin), a positional
/// argument, or stdin when it is not a terminal.
#[derive(Args, Debug, Clone)]
pub struct PromptArgs {
    /// The prompt text (generate: tokenized as is, no chat template; run: the user's message).
    #[arg(long, short = 'p', value_name = "TEXT", conflicts_with_all = ["prompt_file", "text"])]
    pub prompt: Option<String>,

    /// Read the prompt from FILE (`-` = standard input).
    #[arg(long, value_name = "FILE", conflicts_with = "text")]
    pub prompt_file: Option<PathBuf>,

    /// The prompt as a positional argument.
    #[arg(value_name = "PROMPT")]
    pub text: Option<String>,
}
