//! What a fine-tuning run is asked to do.

use std::path::PathBuf;

use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

/// The training policies (defined with the policy tables in qwen2-core).
pub use qwen2_core::precision::TrainPolicy as TrainPrecision;

use qwen2_core::model::QuantTarget;

use crate::lora::LoraOptions;
use crate::optim::AdamWConfig;
use crate::scaler::ScalerConfig;
use crate::schedule::LrSchedule;

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Length {
    /// This many optimizer steps.
    Steps(usize),
    /// This many passes over the data.
    Epochs(usize),
}

/// Everything a fine-tuning run needs. [`FinetuneOptions::new`] gives the CLI's defaults.
#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    /// HF model directory of the base model.
    pub model: PathBuf,
    /// JSONL training data.
    pub data: PathBuf,
    /// Output directory (adapter or model, checkpoints under `checkpoints/`).
    pub out: PathBuf,
    /// LoRA (`Some`) or full fine-tuning (`None`).
    pub lora: Option<LoraOptions>,
    /// Start the adapters from this PEFT adapter directory instead of a fresh init.
    pub init_adapter: Option<PathBuf>,
    /// Numerics.
    pub precision: TrainPrecision,
    /// Steps or epochs.
    pub length: Length,
    /// Records per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Schedule after warm-up.
    pub lr_schedule: LrSchedule,
    /// Linear warm-up steps from 0.
    pub warmup_steps: usize,
    /// AdamW constants and weight decay.
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip (0 = off).
    pub max_grad_norm: f64,
    /// Records are truncated to this many tokens (default: min(1024, context)).
    pub max_seq_len: Option<usize>,
    /// Seed of shuffling, adapter init and dropout.
    pub seed: u64,
    /// Shuffle records each epoch.
    pub shuffle: bool,
    /// JSONL evaluation data.
    pub eval: Option<PathBuf>,
    /// Evaluate every N steps (and at the end); 0 = only at the end.
    pub eval_every: usize,
    /// Save a checkpoint every N steps; 0 = never (the final result is always saved).
    pub save_every: usize,
    /// Continue from this checkpoint directory.
    pub resume: Option<PathBuf>,
    /// dtype of a saved full model (default: the base checkpoint's).
    pub save_dtype: Option<FloatDType>,
    /// Loss scaling under `f16-scaled`.
    pub scaler: ScalerConfig,
    /// Stop after this many skipped steps in a row (overflowing gradients).
    pub max_skipped_steps: usize,
    /// Stop when the loss scale falls below this.
    pub min_loss_scale: f64,
    /// Probe the gradient at every module site of the backward pass and stop at the first
    /// non-finite one, naming it (even when loss scaling would have skipped the step).
    pub detect_anomaly: bool,
    /// On a non-finite loss or a diverging scale, continue from the current (last good) state
    /// under the next safer policy (f16 → f16-scaled → f32, bf16 → f32) instead of stopping.
    pub fallback: bool,
    /// Hold the frozen base's projections quantized (LoRA on a quantized base, QLoRA-style):
    /// the forward runs on the integer/bf16 kernels over the blocks and the backward passes the
    /// input gradient through them. Needs `lora` and a backend whose training kernels
    /// differentiate quantized products (the CPU's).
    pub quantize: Option<QuantTarget>,
}

impl FinetuneOptions {
    /// The defaults of `qwen2 finetune`.
    pub fn new(
        model: impl Into<PathBuf>,
        data: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        FinetuneOptions {
            model: model.into(),
            data: data.into(),
            out: out.into(),
            lora: None,
            init_adapter: None,
            precision: TrainPrecision::F32,
            length: Length::Epochs(1),
            batch_size: 4,
            grad_accum: 1,
            lr: 2e-4,
            lr_schedule: LrSchedule::Cosine,
            warmup_steps: 0,
            adamw: AdamWConfig::default(),
            max_grad_norm: 1.0,
            max_seq_len: None,
            seed: 0,
            shuffle: false,
            eval: None,
            eval_every: 0,
            save_every: 0,
            resume: None,
            save_dtype: None,
            scaler: ScalerConfig::default(),
            max_skipped_steps: 20,
            min_loss_scale: 1.0,
            detect_anomaly: false,
            fallback: false,
            quantize: None,
        }
    }
}
