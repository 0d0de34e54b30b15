//! qwen2-train: fine-tuning Qwen2 / Qwen2.5 (full and LoRA) on burn's autodiff, with
//! PyTorch's and HF Trainer's semantics: masked causal cross-entropy averaged over the label
//! tokens of an optimizer step, gradient accumulation, global-norm clipping, AdamW with f32
//! state, HF's LR schedules, PEFT-format adapters, checkpoints that resume bit for bit.
//!
//! The model is the inference graph of `qwen2-core` on `burn::backend::Autodiff<B>`: trained
//! weights are f32 tensors marked `require_grad`, frozen ones plain tensors, and the precision
//! plan's casts (differentiable) give bf16 compute where asked.

pub mod anomaly;
pub mod batches;
pub mod checkpoint;
pub mod data;
pub mod diagnose;
pub mod error;
mod kernels;
pub mod lora;
pub mod optim;
pub mod options;
pub mod records;
mod run;
pub mod save;
pub mod scaler;
pub mod schedule;
pub mod trainer;
mod update;

pub use burn::backend::Autodiff;
pub use error::{Result, TrainError};
pub use lora::LoraOptions;
pub use options::{FinetuneOptions, Length, TrainPrecision};
pub use records::{EvalRecord, Event, RunState, StepRecord};
pub use scaler::{LossScaler, ScalerConfig};
pub use schedule::LrSchedule;
pub use trainer::Trainer;
