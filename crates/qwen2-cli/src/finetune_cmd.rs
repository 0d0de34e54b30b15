//! `qwen2 finetune` and `qwen2 merge`: argument handling, progress and the JSON log around
//! qwen2-train's [`Trainer`].

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::tensor::FloatDType;
use qwen2_burn::core::adapter::Adapter;
use qwen2_burn::core::precision::ResolvedTraining;
use qwen2_burn::core::{Platform, PrecisionPlan, Qwen2Model};
use qwen2_train::{
    Autodiff, Event, FinetuneOptions, Length, LoraOptions, TrainError, TrainPrecision, Trainer,
};

use crate::args::{FinetuneArgs, MergeArgs};
use crate::model_setup::CliResult;
use qwen2_burn::core::engine::first_device;

/// Set by SIGINT: the trainer saves a checkpoint after the current step and stops.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    // A second Ctrl-C ends the process at once.
    // SAFETY: signal() is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

/// Maps `q` to `q_proj` etc. and checks nothing else here (the trainer names unknown ones).
fn target_name(t: &str) -> String {
    match t {
        "q" | "k" | "v" | "o" | "gate" | "up" | "down" => format!("{t}_proj"),
        other => other.to_string(),
    }
}

/// Builds the library options from the command line.
pub fn options(a: &FinetuneArgs, training: &ResolvedTraining) -> CliResult<FinetuneOptions> {
    let mut o = FinetuneOptions::new(&a.model, &a.data, &a.out);
    if a.lora {
        o.lora = Some(LoraOptions {
            r: a.lora_r,
            alpha: a.lora_alpha,
            dropout: a.lora_dropout,
            targets: a.lora_targets.iter().map(|t| target_name(t)).collect(),
        });
        o.init_adapter = a.adapter.clone();
    } else if a.adapter.is_some() {
        return Err("--adapter (start from an existing adapter) needs --lora".into());
    }
    if let Some(q) = &a.quantize {
        o.quantize = Some(q.parse().map_err(|e| format!("--quantize: {e}"))?);
    }
    o.precision = training.policy;
    o.scaler = qwen2_train::ScalerConfig {
        init_scale: a.loss_scale_init,
        growth_factor: a.loss_scale_growth_factor,
        backoff_factor: a.loss_scale_backoff,
        growth_interval: a.loss_scale_growth_interval,
    };
    o.max_skipped_steps = a.max_skipped_steps;
    o.detect_anomaly = a.detect_anomaly;
    o.fallback = match a.on_nonfinite {
        Some(crate::args::OnNonFinite::Fallback) => true,
        Some(crate::args::OnNonFinite::Error) => false,
        None => training.rule.is_some(),
    };
    o.min_loss_scale = a.min_loss_scale;
    o.length = match (a.steps, a.epochs) {
        (Some(_), Some(_)) => return Err("give --steps or --epochs, not both".into()),
        (Some(n), None) => Length::Steps(n),
        (None, Some(n)) => Length::Epochs(n),
        (None, None) => Length::Epochs(1),
    };
    o.batch_size = a.batch_size;
    o.grad_accum = a.grad_accum;
    o.lr = a.lr;
    o.lr_schedule = a.lr_schedule.parse()?;
    o.warmup_steps = a.warmup_steps;
    o.adamw.weight_decay = a.weight_decay;
    o.max_grad_norm = a.max_grad_norm;
    o.max_seq_len = a.max_seq_len;
    o.seed = a.seed;
    o.shuffle = a.shuffle;
    o.eval = a.eval.clone();
    o.eval_every = a.eval_every;
    o.save_every = a.save_every;
    o.resume = a.resume.clone();
    o.save_dtype = match a.save_dtype.as_deref() {
        None => None,
        Some("f32") => Some(FloatDType::F32),
        Some("bf16") => Some(FloatDType::BF16),
        Some("f16") => Some(FloatDType::F16),
        Some(other) => {
            return Err(format!("--save-dtype {other}: expected f32, bf16 or f16").into())
        }
    };
    Ok(o)
}

/// Draws `step 5/20 [####------] loss 5.1234 lr 1.0e-3 1234 tok/s ETA 0:12` on stderr.
struct Progress {
    show: bool,
    start: Instant,
    first_step: usize,
    total: usize,
}

impl Progress {
    fn step(&self, r: &qwen2_train::StepRecord, tokens_done: usize) {
        if !self.show {
            return;
        }
        let elapsed = self.start.elapsed().as_secs_f64();
        let done = r.step - self.first_step;
        let eta = elapsed / done.max(1) as f64 * (self.total - r.step) as f64;
        let width = 24;
        let filled = width * r.step / self.total.max(1);
        let scale = r.loss_scale.map_or(String::new(), |s| {
            format!(" scale {s:.0} skipped {}", r.skipped_steps)
        });
        eprint!(
            "\rstep {}/{} [{}{}] loss {:.4} lr {:.2e}{scale} {:.0} tok/s ETA {}:{:02}\x1b[K",
            r.step,
            self.total,
            "#".repeat(filled),
            "-".repeat(width - filled),
            r.loss,
            r.lr,
            tokens_done as f64 / elapsed.max(1e-9),
            (eta as u64) / 60,
            (eta as u64) % 60
        );
    }

    fn clear(&self) {
        if self.show {
            eprint!("\r\x1b[K");
        }
    }
}

/// `qwen2 finetune`.
pub fn finetune_cmd<P: Platform>(a: FinetuneArgs) -> CliResult {
    let device = first_device::<P>()?;
    let hw = P::probe(&device);
    let choice = match a.precision.as_str() {
        "auto" => None,
        p => Some(p.parse::<TrainPrecision>()?),
    };
    let training = P::policy_table().select_training(&hw, choice)?;
    tracing::info!(hardware = %hw, policy = %training.policy, rule = ?training.rule, reason = %training.reason, "training precision");
    if let Some(rule) = training.rule {
        eprintln!(
            "--precision auto: {} (rule {rule}: {})",
            training.policy, training.reason
        );
    }
    let opts = options(&a, &training)?;
    if a.dry_run {
        return dry_run::<P>(&opts, &hw, &device);
    }
    let mut log = match &a.json_log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("--json-log {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut trainer = Trainer::<Autodiff<P::B>>::new(opts, &device)?;
    // QWEN2_TRAIN_KERNELS=generic trains on burn's generic graph and ops (for comparisons).
    if std::env::var("QWEN2_TRAIN_KERNELS").as_deref() != Ok("generic") {
        trainer = trainer.with_kernels(P::training_kernels());
    }
    let data = trainer.dataset();
    eprintln!(
        "fine-tuning {} ({}, {}) on {} records of {}{}: {} steps from step {}, {} trained tensors ({} values), backend {}",
        a.model.display(),
        match (a.lora, &a.quantize, trainer.model().is_quantized()) {
            (true, Some(q), _) => format!("LoRA on a {q} base"),
            (true, None, true) => "LoRA on the file's quantized weights".to_string(),
            (true, None, false) => "LoRA".to_string(),
            (false, _, _) => "full".to_string(),
        },
        trainer.options().precision,
        data.examples.len(),
        data.path.display(),
        if data.truncated > 0 { format!(" ({} truncated to --max-seq-len)", data.truncated) } else { String::new() },
        trainer.total_steps(),
        trainer.steps_done(),
        trainer.trained().count(),
        trainer.trained().map(|(_, n)| n).sum::<usize>(),
        P::NAME,
    );
    // SAFETY: installs a handler that only stores to an atomic and resets the disposition.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
    let progress = Progress {
        show: std::io::stderr().is_terminal(),
        start: Instant::now(),
        first_step: trainer.steps_done(),
        total: trainer.total_steps(),
    };
    let mut tokens = 0;
    let mut last = None;
    let mut rates = Vec::new();
    let mut write_log = |value: serde_json::Value| -> std::io::Result<()> {
        if let Some(f) = log.as_mut() {
            writeln!(f, "{value}")?;
            f.flush()?;
        }
        Ok(())
    };
    let mut log_error = None;
    let result = trainer.run(&STOP, &mut |event| {
        let value = match event {
            Event::Step(r) => {
                tokens += r.tokens;
                rates.push(r.tokens as f64 / r.seconds.max(1e-12));
                progress.step(r, tokens);
                last = Some(r.clone());
                serde_json::to_value(r).expect("record serializes")
            }
            Event::Eval(e) => {
                progress.clear();
                eprintln!(
                    "step {}: eval loss {:.4} over {} tokens",
                    e.step, e.eval_loss, e.eval_tokens
                );
                serde_json::to_value(e).expect("record serializes")
            }
            Event::Checkpoint(dir) => {
                progress.clear();
                eprintln!("checkpoint {}", dir.display());
                return;
            }
            Event::Fallback {
                step,
                from,
                to,
                reason,
            } => {
                progress.clear();
                eprintln!("step {step} failed under {from}: {reason}\nfalling back to {to} from the last good state");
                serde_json::json!({"fallback": {"step": step, "from": from.name(), "to": to.name(), "reason": reason}})
            }
        };
        if let Err(e) = write_log(value) {
            log_error.get_or_insert(e);
        }
    });
    progress.clear();
    if let Some(e) = log_error {
        eprintln!("warning: writing --json-log failed: {e}");
    }
    if result.is_ok() {
        // The first step pays for allocations and first-call set-up: the median leaves it out.
        let mut steady: Vec<f64> = rates.iter().skip(1).copied().collect();
        steady.sort_by(f64::total_cmp);
        let summary = serde_json::json!({
            "summary": true,
            "backend": P::NAME,
            "precision": a_precision_name(&a, &trainer),
            "lora": a.lora,
            "steps": rates.len(),
            "tokens_per_s": steady.get(steady.len() / 2),
            "tokens_per_s_min": steady.first(),
            "tokens_per_s_max": steady.last(),
            "seconds": progress.start.elapsed().as_secs_f64(),
            "peak_rss_bytes": crate::bench::proc_status_bytes("VmHWM:"),
        });
        if let Err(e) = write_log(summary) {
            eprintln!("warning: writing --json-log failed: {e}");
        }
    }
    match result {
        Ok(()) => {
            let secs = progress.start.elapsed().as_secs_f64();
            if let Some(r) = last {
                eprintln!(
                    "done: {} steps in {secs:.1}s ({:.0} tok/s), last loss {:.4}; {} saved in {}",
                    r.step,
                    tokens as f64 / secs.max(1e-9),
                    r.loss,
                    if a.lora { "adapter" } else { "model" },
                    a.out.display()
                );
            }
            Ok(())
        }
        Err(TrainError::Interrupted { step, checkpoint }) => {
            eprintln!(
                "interrupted after step {step}; resume with: qwen2 finetune ... --resume {}",
                checkpoint.display()
            );
            std::process::exit(130);
        }
        Err(e) => Err(e.into()),
    }
}

/// `qwen2 merge`: base + adapter → an HF model directory with `W + scale · B A` in each
/// adapted projection.
pub fn merge_cmd<P: Platform>(a: MergeArgs) -> CliResult {
    if let Ok(Some(gguf)) = qwen2_burn::core::source::gguf_model_path(&a.model) {
        return Err(format!(
            "--model {}: a GGUF model; merge writes an HF model directory and needs the Hugging \
             Face checkpoint the GGUF was converted from (run the GGUF with --adapter instead)",
            gguf.display()
        )
        .into());
    }
    let device = first_device::<P>()?;
    let mut model = Qwen2Model::<P::B>::load(&a.model, PrecisionPlan::F32, &device)?;
    let adapter = Adapter::open(&a.adapter)?;
    let adapted = adapter.attach(&mut model, FloatDType::F32)?;
    model.merge_adapters();
    let dtype = match a.save_dtype.as_deref() {
        None => match model.config().torch_dtype.as_deref() {
            Some("bfloat16") => FloatDType::BF16,
            Some("float16") => FloatDType::F16,
            _ => FloatDType::F32,
        },
        Some("f32") => FloatDType::F32,
        Some("bf16") => FloatDType::BF16,
        Some("f16") => FloatDType::F16,
        Some(other) => {
            return Err(format!("--save-dtype {other}: expected f32, bf16 or f16").into())
        }
    };
    qwen2_train::save::save_model_dir(&mut model, &a.model, &a.out, dtype)?;
    eprintln!(
        "merged {adapted} adapted projections of {} into {}",
        a.adapter.display(),
        a.out.display()
    );
    Ok(())
}

fn a_precision_name<B: qwen2_train::anomaly::GradProbe>(
    _: &FinetuneArgs,
    trainer: &Trainer<B>,
) -> &'static str {
    trainer.precision().name()
}

/// `qwen2 finetune --dry-run`: the training analogue of `qwen2 diagnose`.
fn dry_run<P: Platform>(
    opts: &FinetuneOptions,
    hw: &qwen2_burn::core::precision::Hardware,
    device: &burn::tensor::Device<P::B>,
) -> CliResult {
    use qwen2_burn::core::precision::TrainPolicy;
    let policies: Vec<TrainPolicy> = TrainPolicy::ALL
        .iter()
        .copied()
        .filter(|p| P::policy_table().select_training(hw, Some(*p)).is_ok())
        .collect();
    let runs = qwen2_train::diagnose::diagnose_training::<Autodiff<P::B>>(
        opts,
        &policies,
        device,
        &P::training_kernels,
    )?;
    println!("device: {hw}");
    println!(
        "one forward + backward of the first micro-batch of {} per training policy",
        opts.data.display()
    );
    println!("\npolicy      loss scale        loss  forward / backward");
    for r in &runs {
        let status = match (&r.forward_nonfinite, &r.backward_nonfinite) {
            (None, None) if r.loss.is_finite() => "finite".to_string(),
            (Some(f), _) => format!("forward overflows at {f}"),
            (None, Some(b)) => format!("backward overflows at {b}"),
            (None, None) => "non-finite loss".to_string(),
        };
        println!(
            "{:<11} {:>10} {:>11.4} {status}",
            r.policy.name(),
            r.scale,
            r.loss
        );
    }
    let f32_runs: Vec<_> = runs
        .iter()
        .filter(|r| r.policy == TrainPolicy::F32)
        .collect();
    for r in &f32_runs {
        println!(
            "gradient values (f32 run, loss scale {}) that would round to 0 in f16: {} of {} ({:.3}%)",
            r.scale,
            r.f16_underflow,
            r.gradient_values,
            100.0 * r.f16_underflow as f64 / r.gradient_values.max(1) as f64
        );
    }
    if let Some(r) = f32_runs.first() {
        println!("\nper-layer peak |activation| and |gradient| (f32, loss scale 1) against the f16 limit 65504:");
        for (l, (a, g)) in r
            .layer_activation_peaks
            .iter()
            .zip(&r.layer_gradient_peaks)
            .enumerate()
        {
            let mark = |v: f32| if v >= 65504.0 { "  overflows f16" } else { "" };
            println!(
                "  layer {l:>3}: activation {a:>10.3e} ({:>6.1}%){}   gradient {g:>10.3e} ({:>6.1}%){}",
                100.0 * a / 65504.0,
                mark(*a),
                100.0 * g / 65504.0,
                mark(*g)
            );
        }
    }
    Ok(())
}
