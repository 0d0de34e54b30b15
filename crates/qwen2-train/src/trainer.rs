//! The training loop: forward on burn's autodiff, masked causal cross-entropy, gradient
//! accumulation, global-norm clipping, AdamW and the LR schedule, with HF Trainer's semantics.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use burn::prelude::{Int, Tensor};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::cast::ToElement;
use burn::tensor::{FloatDType, TensorData};
use qwen2_core::adapter::Adapter;
use qwen2_core::model::{
    context_length, Batch, FusedKernels, Qwen2Model, WeightKind, WeightMut, WeightQuantization,
};
use qwen2_core::monitor::locate_nonfinite;
use qwen2_core::observe::{NoObserver, Observer, Site};
use qwen2_core::text::{ChatTemplate, GenerationConfig, TextTokenizer};
use qwen2_core::ModelSource;

use crate::anomaly::{first_nonfinite, AnomalyProbes, GradProbe, GradStats, WatchBoth};
use crate::batches::{BatchPlan, MicroBatch};
use crate::data::{Dataset, TextPipeline};
use crate::error::{Result, TrainError};
use crate::optim::{clip_factor, Moments};
use crate::options::{FinetuneOptions, Length, TrainPrecision};
use crate::records::{RunState, StepRecord};
use crate::run::{check_options, check_writable};
use crate::scaler::LossScaler;
use crate::update::{apply_adamw, grad_stats, OptimKernel};
use crate::{checkpoint, lora};

/// Whether a weight of `kind` is trained: base weights in full fine-tuning, adapters under LoRA.
pub(crate) fn is_trained(kind: WeightKind, full: bool) -> bool {
    (kind == WeightKind::Base) == full
}

/// One flattened f32 gradient per trained tensor (`None` where a tensor got none).
pub type Grads<B> = Vec<Option<Tensor<<B as AutodiffBackend>::InnerBackend, 1>>>;

/// Trained tensors by name with their AdamW state.
pub(crate) type Params<B> = Vec<(String, Moments<<B as AutodiffBackend>::InnerBackend>)>;

/// A fine-tuning run on backend `B` (an autodiff backend).
pub struct Trainer<B: GradProbe> {
    pub(crate) model: Qwen2Model<B>,
    pub(crate) opts: FinetuneOptions,
    pub(crate) train: Dataset,
    pub(crate) eval: Option<Dataset>,
    pub(crate) batches: BatchPlan,
    pub(crate) total_steps: usize,
    /// Optimizer steps attempted (the data position).
    pub(crate) step: usize,
    /// Trained weights by name, in visiting order, with their AdamW state.
    pub(crate) params: Params<B>,
    /// Counters and the loss scaler: the part of the state besides tensors.
    pub(crate) state: RunState,
    /// `--detect-anomaly`: the first non-finite gradient site of the current step.
    pub(crate) anomaly: Option<(GradStats, f32, Option<Site>)>,
    /// The backend's one-pass AdamW, if it has one.
    pub(crate) optimizer: OptimKernel<B>,
    /// The backend's fused ops (the loss), if it has them.
    pub(crate) fused: Option<Arc<dyn FusedKernels<B>>>,
    /// Whether the installed kernels pass gradients through quantized projections.
    pub(crate) quantized_grads: bool,
}

impl<B: GradProbe> Trainer<B> {
    /// Checks everything that can be checked before training (options, output directory,
    /// data, adapter, checkpoint), loads the model on `device` and prepares the run.
    pub fn new(opts: FinetuneOptions, device: &B::Device) -> Result<Self> {
        check_options(&opts)?;
        check_writable(&opts.out)?;
        let source = ModelSource::resolve(&opts.model)?;
        let config = source.config()?;
        let context = context_length(&config);
        let max_len = opts.max_seq_len.unwrap_or(1024.min(context));
        if max_len > context {
            return Err(TrainError::option(
                "--max-seq-len",
                format!("{max_len} is longer than the model's context ({context} positions)"),
            ));
        }
        let tokenizer = match source.is_gguf() || opts.model.join("tokenizer.json").is_file() {
            true => Some(TextTokenizer::from_model_dir(&opts.model)?),
            false => None,
        };
        let template = ChatTemplate::from_model_dir(&opts.model)?;
        let pipeline = tokenizer.as_ref().map(|tokenizer| {
            let mut end_of_turn = GenerationConfig::from_model_dir(&opts.model)
                .ok()
                .and_then(|g| g.eos_token_id)
                .unwrap_or_default();
            end_of_turn.extend(tokenizer.token_id("<|im_end|>"));
            TextPipeline {
                tokenizer,
                template: &template,
                end_of_turn,
            }
        });
        let load = |p: &Path| Dataset::load(p, pipeline.as_ref(), max_len, config.vocab_size);
        let train = load(&opts.data)?;
        let eval = opts.eval.as_deref().map(load).transpose()?;
        let batches = BatchPlan {
            records: train.examples.len(),
            batch_size: opts.batch_size,
            grad_accum: opts.grad_accum,
            shuffle: opts.shuffle.then_some(opts.seed),
        };
        let total_steps = match opts.length {
            Length::Steps(n) => n,
            Length::Epochs(n) => batches.steps_for_epochs(n),
        };

        let plan = opts.precision.plan(opts.lora.is_none());
        // A GGUF base under LoRA keeps its blocks as stored (LoRA on the file as downloaded).
        let stored = match (source.is_gguf(), &opts.lora) {
            (true, Some(_)) => WeightQuantization::Stored,
            _ => WeightQuantization::Dense,
        };
        let quant = opts.quantize.map_or(stored, WeightQuantization::To);
        let mut model =
            Qwen2Model::<B>::load_quantized(&opts.model, plan, quant, device, &mut |_, _| {})?;
        if let Some(l) = &opts.lora {
            match &opts.init_adapter {
                Some(dir) => {
                    Adapter::open(dir)?.attach(&mut model, FloatDType::F32)?;
                }
                None => {
                    lora::attach_fresh(&mut model, l, opts.seed)?;
                }
            }
            lora::set_dropout(&mut model, l.dropout, opts.seed);
        }
        let full = opts.lora.is_none();
        let mut params = Vec::new();
        let mut half_master = None;
        model.visit_weights(&mut |name, kind, w| {
            if !is_trained(kind, full) {
                return;
            }
            let (numel, dtype) = match w {
                WeightMut::Vector(t) => {
                    *t = t.clone().require_grad();
                    (t.shape().num_elements(), t.dtype())
                }
                WeightMut::Matrix(t) => {
                    *t = t.clone().require_grad();
                    (t.shape().num_elements(), t.dtype())
                }
            };
            if dtype != burn::tensor::DType::F32 {
                half_master.get_or_insert(format!("{name} is {dtype:?}"));
            }
            params.push((name.to_string(), Moments::zeros(numel, device)));
        });
        if let Some(what) = half_master {
            // As PyTorch refuses to unscale f16 gradients: trained weights must be f32 masters.
            return Err(TrainError::option(
                "--precision",
                format!("trained weights must be f32 master weights, but {what}"),
            ));
        }
        let trainer_precision = opts.precision;
        let mut trainer = Trainer {
            model,
            opts,
            train,
            eval,
            batches,
            total_steps,
            step: 0,
            params,
            anomaly: None,
            optimizer: None,
            fused: None,
            quantized_grads: false,
            state: RunState {
                applied: 0,
                skipped_total: 0,
                skipped_in_a_row: 0,
                scaler: None,
                precision: trainer_precision,
            },
        };
        if trainer.opts.precision.scaled() {
            trainer.state.scaler = Some(LossScaler::new(trainer.opts.scaler));
        }
        if let Some(dir) = trainer.opts.resume.clone() {
            checkpoint::restore(&mut trainer, &dir)?;
        }
        tracing::info!(
            records = trainer.train.examples.len(),
            truncated = trainer.train.truncated,
            steps = trainer.total_steps,
            trained_tensors = trainer.params.len(),
            "fine-tuning ready"
        );
        Ok(trainer)
    }

    /// The model being trained.
    pub fn model(&self) -> &Qwen2Model<B> {
        &self.model
    }

    /// The options of the run.
    pub fn options(&self) -> &FinetuneOptions {
        &self.opts
    }

    /// The training data.
    pub fn dataset(&self) -> &Dataset {
        &self.train
    }

    /// The policy the run computes in now (the requested one, or a safer one after a fallback).
    pub fn precision(&self) -> TrainPrecision {
        self.state.precision
    }

    /// Optimizer steps completed.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Optimizer steps of the whole run.
    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    /// Trained tensors (name, numel) in order.
    pub fn trained(&self) -> impl Iterator<Item = (&str, usize)> {
        self.params
            .iter()
            .map(|(n, m)| (n.as_str(), m.m.shape().num_elements()))
    }

    pub(crate) fn parts_mut(&mut self) -> (&mut Qwen2Model<B>, &mut Params<B>, &mut usize) {
        (&mut self.model, &mut self.params, &mut self.step)
    }

    /// The learning rate after `step` applied updates (skipped steps do not advance the
    /// schedule, as in HF Trainer).
    pub fn lr_at(&self, step: usize) -> f64 {
        self.opts.lr
            * self
                .opts
                .lr_schedule
                .factor(step, self.opts.warmup_steps, self.total_steps)
    }

    /// The micro-batches of optimizer step `step`.
    fn micro_batches(&self, step: usize) -> Vec<MicroBatch> {
        self.batches
            .step(step)
            .iter()
            .map(|records| MicroBatch::new(&self.train.examples, records))
            .collect()
    }

    /// Forward and backward of one step without updating anything: the loss and the
    /// accumulated gradient of every trained tensor (flattened, f32), in [`Trainer::trained`]
    /// order (`None` where a tensor got no gradient).
    pub fn gradients(&mut self) -> Result<(f64, Grads<B>)> {
        let step = self.step;
        let micro = self.micro_batches(step);
        let (loss, grads, _) = self.accumulate(step, &micro, None)?;
        Ok((loss, grads))
    }

    /// Forward and backward of the current step's first micro-batch on `loss × scale` with a
    /// probe at every site (and `forward` watching the activations): the loss and each site's
    /// gradient statistics in backward order. Nothing is updated.
    pub fn probe_gradients(
        &mut self,
        scale: f32,
        forward: &mut dyn Observer<B>,
    ) -> Result<(f64, Vec<GradStats>)> {
        self.check_quantized_base()?;
        let micro = self.micro_batches(self.step);
        let label_tokens: usize = micro.iter().map(|m| m.targets.len()).sum();
        let mut probes = AnomalyProbes::<B>::default();
        let mut both = WatchBoth {
            forward,
            probes: &mut probes,
        };
        let sum = self.loss_sum(&micro[0], &mut both)?;
        let loss = sum.div_scalar(label_tokens.max(1) as f64);
        let value = loss.clone().inner().into_scalar().to_f64();
        let _grads = (loss * scale as f64).backward();
        Ok((value, probes.sink.take()))
    }

    fn accumulate(
        &mut self,
        step: usize,
        micro: &[MicroBatch],
        loss_scale: Option<f32>,
    ) -> Result<(f64, Grads<B>, usize)> {
        self.check_quantized_base()?;
        let label_tokens: usize = micro.iter().map(|m| m.targets.len()).sum();
        let mut acc: Vec<Option<Tensor<B::InnerBackend, 1>>> = vec![None; self.params.len()];
        let mut loss = 0.0;
        for (k, mb) in micro.iter().enumerate() {
            if mb.targets.is_empty() {
                continue;
            }
            if let Some(l) = &self.opts.lora {
                if l.dropout > 0.0 {
                    let seed = self.opts.seed ^ ((step as u64) << 20) ^ k as u64;
                    lora::arm_dropout(&mut self.model, true, seed);
                }
            }
            let mut probes = AnomalyProbes::<B>::default();
            let sum = if self.opts.detect_anomaly {
                self.loss_sum(mb, &mut probes)?
            } else {
                self.loss_sum(mb, &mut NoObserver)?
            };
            let scaled = sum.div_scalar(label_tokens as f64);
            loss += scaled.clone().inner().into_scalar().to_f64();
            let grads = match loss_scale {
                Some(scale) => (scaled * scale as f64).backward(),
                None => scaled.backward(),
            };
            if self.opts.detect_anomaly && self.anomaly.is_none() {
                self.anomaly = first_nonfinite(&probes.sink.take());
            }
            let mut i = 0;
            self.model.visit_weights(&mut |_, kind, w| {
                if !is_trained(kind, self.opts.lora.is_none()) {
                    return;
                }
                let g = match w {
                    WeightMut::Vector(t) => t.grad(&grads),
                    WeightMut::Matrix(t) => t.grad(&grads).map(|g| g.flatten::<1>(0, 1)),
                };
                if let Some(g) = g {
                    let g = g.cast(FloatDType::F32);
                    acc[i] = Some(match acc[i].take() {
                        Some(a) => a + g,
                        None => g,
                    });
                }
                i += 1;
            });
        }
        if self.opts.lora.as_ref().is_some_and(|l| l.dropout > 0.0) {
            lora::arm_dropout(&mut self.model, false, 0);
        }
        Ok((loss, acc, label_tokens))
    }

    /// Σ of the cross-entropy over a micro-batch's targets, f32, `[1]` (on the tape).
    pub(crate) fn loss_sum(
        &self,
        mb: &MicroBatch,
        obs: &mut dyn Observer<B>,
    ) -> Result<Tensor<B, 1>> {
        let rows: Vec<&[u32]> = mb.rows.iter().map(Vec::as_slice).collect();
        let batch = Batch::new(&rows, 0)?;
        let device = self.model.device();
        let hidden = self.model.forward_hidden(&batch, obs)?;
        let n = mb.targets.len();
        let positions: Vec<i64> = mb.targets.iter().map(|&(p, _)| p as i64).collect();
        let positions = Tensor::<B, 1, Int>::from_data(TensorData::new(positions, [n]), device);
        let logits = self
            .model
            .head(hidden.select(0, positions), obs)
            .cast(FloatDType::F32);
        let ids: Vec<u32> = mb.targets.iter().map(|&(_, t)| t).collect();
        if let Some(sum) = self
            .fused
            .as_ref()
            .and_then(|k| k.cross_entropy_sum(&logits, &ids))
        {
            return Ok(sum);
        }
        let targets: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, 1]), device);
        let picked = log_softmax(logits, 1).gather(1, targets);
        Ok(picked.sum().neg())
    }

    /// Runs one optimizer step: forward/backward over the step's micro-batches, clipping,
    /// AdamW, schedule.
    pub fn step(&mut self) -> Result<StepRecord> {
        let start = Instant::now();
        let step = self.step;
        let micro = self.micro_batches(step);
        let tokens = micro.iter().map(MicroBatch::tokens).sum();
        let scale = self.state.scaler.map(|s| s.scale);
        self.anomaly = None;
        let (loss, mut grads, label_tokens) = self.accumulate(step, &micro, scale)?;
        if !loss.is_finite() {
            return Err(self.nonfinite_forward(step, &micro));
        }
        let unscale = self.state.scaler.map(|s| s.inv_scale() as f64);
        let (finite, grad_norm, unscale) =
            grad_stats(self.optimizer.as_deref(), &mut grads, unscale);
        let lr = self.lr_at(self.state.applied);
        let record = |skipped: bool, state: &RunState| StepRecord {
            step: step + 1,
            loss,
            lr,
            grad_norm,
            clipped: false,
            tokens,
            label_tokens,
            seconds: start.elapsed().as_secs_f64(),
            loss_scale: scale.map(f64::from),
            skipped,
            skipped_steps: state.skipped_total,
            epoch: self.batches.epoch_after(step + 1),
            precision: state.precision.name(),
        };
        if let Some(scaler) = &mut self.state.scaler {
            scaler.update(!finite);
        }
        if let (false, Some((bad, peak_before, peak_site))) = (finite, self.anomaly.take()) {
            return Err(TrainError::Anomaly {
                step,
                site: bad.site.to_string(),
                nan: bad.nan,
                inf: bad.inf,
                dtype: format!("{:?}", bad.dtype).to_lowercase(),
                peak_before,
                peak_site: peak_site.map_or("-".into(), |s| s.to_string()),
                scale: scale.map(f64::from),
            });
        }
        if !finite {
            if self.state.scaler.is_none() {
                return Err(TrainError::NonFinite {
                    what: "gradients".into(),
                    step,
                });
            }
            self.step += 1;
            self.state.skipped_total += 1;
            self.state.skipped_in_a_row += 1;
            let r = record(true, &self.state);
            tracing::warn!(step, scale = ?scale, "gradients overflowed: step skipped, loss scale backed off");
            self.check_divergence(step)?;
            return Ok(r);
        }
        self.state.skipped_in_a_row = 0;
        let clip = clip_factor(grad_norm, self.opts.max_grad_norm);
        let lr_t = (lr, self.state.applied + 1);
        apply_adamw(
            &mut self.model,
            &mut self.params,
            &mut grads,
            self.optimizer.as_deref(),
            &self.opts.adamw,
            self.opts.lora.is_none(),
            lr_t,
            unscale,
            clip,
        );
        self.step += 1;
        self.state.applied += 1;
        Ok(StepRecord {
            clipped: clip.is_some(),
            ..record(false, &self.state)
        })
    }

    /// Stops a run whose scaler cannot find a working scale.
    fn check_divergence(&self, step: usize) -> Result<()> {
        let scale = self.state.scaler.map_or(0.0, |s| s.scale as f64);
        let what = if self.state.skipped_in_a_row >= self.opts.max_skipped_steps.max(1) {
            format!(
                "{} steps in a row overflowed (--max-skipped-steps {})",
                self.state.skipped_in_a_row, self.opts.max_skipped_steps
            )
        } else if scale < self.opts.min_loss_scale {
            format!(
                "the loss scale fell below --min-loss-scale {}",
                self.opts.min_loss_scale
            )
        } else {
            return Ok(());
        };
        Err(TrainError::Diverged {
            step,
            what,
            scale,
            skipped: self.state.skipped_in_a_row,
        })
    }

    /// The error for a non-finite loss: the first op of the forward pass that held an inf or
    /// NaN (the stability monitor's full mode, on each row of the step until one fails).
    fn nonfinite_forward(&self, step: usize, micro: &[MicroBatch]) -> TrainError {
        for row in micro.iter().flat_map(|m| m.rows.iter()) {
            match locate_nonfinite(&self.model, row, step) {
                Ok(Some(qwen2_core::Error::NonFinite(report))) => {
                    return TrainError::NonFiniteForward { step, report };
                }
                Ok(_) => continue,
                Err(e) => return e.into(),
            }
        }
        TrainError::NonFinite {
            what: "loss".into(),
            step,
        }
    }
}
