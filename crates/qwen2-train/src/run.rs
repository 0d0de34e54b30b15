//! Running a whole fine-tuning: the loop with evaluation, checkpoints, Ctrl-C and fallback to
//! a safer policy, and saving the result.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::cast::ToElement;
use burn::tensor::FloatDType;
use qwen2_core::model::Qwen2Model;
use qwen2_core::observe::NoObserver;
use qwen2_core::Qwen2Config;

use crate::anomaly::GradProbe;
use crate::batches::MicroBatch;
use crate::error::{Result, TrainError};
use crate::options::{FinetuneOptions, Length, TrainPrecision};
use crate::records::{EvalRecord, Event};
use crate::scaler::LossScaler;
use crate::trainer::Trainer;
use crate::{checkpoint, lora, save};

impl<B: GradProbe> Trainer<B> {
    /// Mean loss over the evaluation data (`None` without `--eval`).
    pub fn evaluate(&self) -> Result<Option<EvalRecord>> {
        let Some(eval) = &self.eval else {
            return Ok(None);
        };
        let (mut sum, mut count) = (0.0, 0);
        let records: Vec<usize> = (0..eval.examples.len()).collect();
        for chunk in records.chunks(self.opts.batch_size) {
            let mb = MicroBatch::new(&eval.examples, chunk);
            if mb.targets.is_empty() {
                continue;
            }
            sum += self
                .loss_sum(&mb, &mut NoObserver)?
                .inner()
                .into_scalar()
                .to_f64();
            count += mb.targets.len();
        }
        Ok(Some(EvalRecord {
            step: self.step,
            eval_loss: sum / count.max(1) as f64,
            eval_tokens: count,
        }))
    }

    /// Trains to the end (or until `stop` is set: then a checkpoint is saved and
    /// [`TrainError::Interrupted`] returned), reporting each event, and saves the result.
    pub fn run(&mut self, stop: &AtomicBool, on: &mut dyn FnMut(Event<'_>)) -> Result<()> {
        while self.step < self.total_steps {
            if stop.load(Ordering::SeqCst) {
                let dir = self.save_checkpoint()?;
                return Err(TrainError::Interrupted {
                    step: self.step,
                    checkpoint: dir,
                });
            }
            let record = match self.step() {
                Ok(r) => r,
                Err(e) if self.opts.fallback && is_numeric_failure(&e) => {
                    let from = self.state.precision;
                    let Some(to) = self.fall_back() else {
                        return Err(e);
                    };
                    let reason = e.to_string();
                    tracing::warn!(%from, %to, step = self.step, %reason, "falling back to a safer training policy");
                    on(Event::Fallback {
                        step: self.step,
                        from,
                        to,
                        reason: &reason,
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            on(Event::Step(&record));
            let (every, done) = (self.opts.eval_every, self.step);
            if every > 0 && done % every == 0 && done < self.total_steps {
                if let Some(e) = self.evaluate()? {
                    on(Event::Eval(&e));
                }
            }
            if self.opts.save_every > 0
                && done % self.opts.save_every == 0
                && done < self.total_steps
            {
                let dir = self.save_checkpoint()?;
                on(Event::Checkpoint(&dir));
            }
        }
        if let Some(e) = self.evaluate()? {
            on(Event::Eval(&e));
        }
        self.save_result()
    }

    /// Switches to the next safer policy from the current (last good) state: the weights and
    /// optimizer state are untouched (a failed step updates nothing), the graph computes in
    /// the new policy's dtypes, and the loss scaler is (re)started or dropped. `None` when the
    /// run is already at the safest policy.
    pub fn fall_back(&mut self) -> Option<TrainPrecision> {
        let next = self.state.precision.safer()?;
        self.apply_precision(next);
        Some(next)
    }

    pub(crate) fn apply_precision(&mut self, p: TrainPrecision) {
        self.state.precision = p;
        self.state.skipped_in_a_row = 0;
        self.state.scaler = p.scaled().then(|| LossScaler::new(self.opts.scaler));
        self.model
            .set_compute_plan(p.plan(self.opts.lora.is_none()));
    }

    /// Writes the state of the run to `out/checkpoints/checkpoint-<step>` (atomically).
    pub fn save_checkpoint(&mut self) -> Result<std::path::PathBuf> {
        checkpoint::save(self)
    }

    /// Writes the trained adapter (PEFT format) or model (HF directory) to `out`.
    pub fn save_result(&mut self) -> Result<()> {
        let out = self.opts.out.clone();
        let base = self.opts.model.display().to_string();
        match self.opts.lora.clone() {
            Some(l) => lora::save_adapter(&mut self.model, &l, &base, &out),
            None => {
                let dtype = self
                    .opts
                    .save_dtype
                    .unwrap_or(source_dtype(&self.opts.model));
                save::save_model_dir(&mut self.model, &self.opts.model, &out, dtype)
            }
        }
    }

    /// The model, for generation after training (LoRA adapters attached).
    pub fn into_model(self) -> Qwen2Model<B> {
        self.model
    }
}

/// Failures a safer policy can cure.
fn is_numeric_failure(e: &TrainError) -> bool {
    matches!(
        e,
        TrainError::NonFinite { .. }
            | TrainError::NonFiniteForward { .. }
            | TrainError::Diverged { .. }
            | TrainError::Anomaly { .. }
    )
}

/// The dtype of the base checkpoint (its config's `torch_dtype`), f32 when unknown.
fn source_dtype(model: &Path) -> FloatDType {
    let dtype = Qwen2Config::from_file(model.join("config.json"))
        .ok()
        .and_then(|c| c.torch_dtype);
    match dtype.as_deref() {
        Some("bfloat16") => FloatDType::BF16,
        Some("float16") => FloatDType::F16,
        _ => FloatDType::F32,
    }
}

pub(crate) fn check_options(o: &FinetuneOptions) -> Result<()> {
    let positive = |name: &str, v: usize| {
        (v > 0)
            .then_some(())
            .ok_or_else(|| TrainError::option(name, "must be at least 1"))
    };
    positive("--batch-size", o.batch_size)?;
    positive("--grad-accum", o.grad_accum)?;
    match o.length {
        Length::Steps(n) => positive("--steps", n)?,
        Length::Epochs(n) => positive("--epochs", n)?,
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return Err(TrainError::option("--lr", "must be a positive number"));
    }
    if !(o.adamw.weight_decay.is_finite() && o.adamw.weight_decay >= 0.0) {
        return Err(TrainError::option("--weight-decay", "must be 0 or more"));
    }
    if !(o.max_grad_norm.is_finite() && o.max_grad_norm >= 0.0) {
        return Err(TrainError::option(
            "--max-grad-norm",
            "must be 0 (off) or more",
        ));
    }
    if o.max_seq_len == Some(0) {
        return Err(TrainError::option("--max-seq-len", "must be at least 1"));
    }
    let gguf = qwen2_core::source::gguf_model_path(&o.model)
        .ok()
        .flatten()
        .is_some();
    if gguf && o.lora.is_none() {
        return Err(TrainError::option(
            "--model",
            format!(
                "{} is a GGUF model: fine-tuning one trains LoRA adapters on its weights as \
                 stored (add --lora); a full fine-tune writes an HF model directory and needs \
                 the Hugging Face checkpoint (config.json + *.safetensors)",
                o.model.display()
            ),
        ));
    }
    if let (Some(q), None) = (o.quantize, &o.lora) {
        return Err(TrainError::option(
            "--quantize",
            format!(
                "{q} holds the base weights quantized and frozen, so it trains LoRA adapters \
                 only: add --lora (a full fine-tune updates every weight as an f32 master)"
            ),
        ));
    }
    if let Some(l) = &o.lora {
        l.validate()?;
    } else if o.init_adapter.is_some() {
        return Err(TrainError::option("--adapter", "needs --lora"));
    }
    if !gguf && !o.model.is_dir() {
        return Err(TrainError::option(
            "--model",
            format!("{} is not a model directory", o.model.display()),
        ));
    }
    Ok(())
}

/// Creates `out` if needed and proves it writable before any work is done.
pub(crate) fn check_writable(out: &Path) -> Result<()> {
    if out.is_file() {
        return Err(TrainError::option(
            "--out",
            format!("{} is a file, not a directory", out.display()),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let probe = save::tmp_name(&out.join("write-probe"));
    std::fs::write(&probe, b"").map_err(|e| TrainError::io(out, e))?;
    std::fs::remove_file(&probe).map_err(|e| TrainError::io(&probe, e))
}
