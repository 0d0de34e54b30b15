//! What a training run reports: one record per step and per evaluation, the events of the
//! loop, and the run's state besides tensors.

use std::path::Path;

use serde::Serialize;

use crate::options::TrainPrecision;
use crate::scaler::LossScaler;

/// What one optimizer step did (one line of `--json-log`).
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// Optimizer steps completed, counting this one (1-based).
    pub step: usize,
    /// Mean cross-entropy over the step's label tokens, before the update.
    pub loss: f64,
    /// Learning rate of this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether the gradients were scaled down to `--max-grad-norm`.
    pub clipped: bool,
    /// Tokens processed (padding excluded).
    pub tokens: usize,
    /// Tokens that carried loss.
    pub label_tokens: usize,
    /// Wall time of the step.
    pub seconds: f64,
    /// The loss scale this step's backward ran with (`f16-scaled` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// Whether the update was skipped because the scaled gradients overflowed.
    pub skipped: bool,
    /// Skipped steps so far.
    pub skipped_steps: usize,
    /// Passes over the data completed (fractional).
    pub epoch: f64,
    /// The training policy this step ran under.
    pub precision: &'static str,
}

/// An evaluation (a line of `--json-log` with `eval_loss`).
#[derive(Debug, Clone, Serialize)]
pub struct EvalRecord {
    /// Optimizer steps completed.
    pub step: usize,
    /// Mean cross-entropy over the evaluation data's label tokens.
    pub eval_loss: f64,
    /// Label tokens evaluated.
    pub eval_tokens: usize,
}

/// What the loop reports as it goes.
pub enum Event<'a> {
    /// A step finished.
    Step(&'a StepRecord),
    /// An evaluation finished.
    Eval(&'a EvalRecord),
    /// A checkpoint was written.
    Checkpoint(&'a Path),
    /// The run went on under a safer policy (`--on-nonfinite fallback`).
    Fallback {
        /// 0-based step that failed.
        step: usize,
        /// The policy that failed.
        from: TrainPrecision,
        /// The policy the run continues with.
        to: TrainPrecision,
        /// What went wrong.
        reason: &'a str,
    },
}

/// What a run carries from step to step besides tensors (saved in checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunState {
    /// Steps whose update was applied (the schedule's and AdamW's step count).
    pub applied: usize,
    /// Steps skipped because the gradients overflowed, in all.
    pub skipped_total: usize,
    /// Steps skipped in a row up to now.
    pub skipped_in_a_row: usize,
    /// The loss scaler under `f16-scaled`.
    pub scaler: Option<LossScaler>,
    /// The policy the run computes in now (the requested one, or a safer one after a fallback).
    pub precision: TrainPrecision,
}
