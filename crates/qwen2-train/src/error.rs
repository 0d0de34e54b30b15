//! Errors of fine-tuning: each names the file, line, tensor or option at fault.

use std::path::PathBuf;

/// A fine-tuning error.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] qwen2_core::Error),
    /// A line of a JSONL data file is not a valid record.
    #[error("{path}:{line}: {message}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A data file holds no usable record.
    #[error("{path}: {message}")]
    EmptyData {
        /// The data file.
        path: PathBuf,
        /// Why nothing could be used.
        message: String,
    },
    /// An option or combination of options is invalid.
    #[error("invalid option {option}: {message}")]
    Option {
        /// The option, e.g. `--lora-targets`.
        option: String,
        /// What is wrong.
        message: String,
    },
    /// An adapter directory does not fit the base model or is not a PEFT LoRA adapter.
    #[error("adapter {path}: {message}")]
    Adapter {
        /// The adapter directory or file.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// A checkpoint to resume from is missing, damaged or from another run.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The loss or the gradients became NaN or infinite.
    #[error("non-finite {what} at optimizer step {step}; --detect-anomaly names the op where the backward pass went non-finite; try a lower --lr, --precision f16-scaled or f32")]
    NonFinite {
        /// `loss` or `gradient norm`.
        what: String,
        /// 0-based optimizer step.
        step: usize,
    },
    /// The forward pass produced inf/NaN: the first op that did, found by the stability monitor.
    #[error(
        "non-finite loss at optimizer step {step}: the forward pass first overflowed at {} \
         (layer {}, held in {}: {} NaN, {} inf); largest finite |x| before it: {:.4e} at {}; \
         try --precision f16-scaled, bf16 or f32",
        report.site, report.layer, report.dtype, report.nan, report.inf, report.peak_before, report.peak_site
    )]
    NonFiniteForward {
        /// 0-based optimizer step.
        step: usize,
        /// Where the forward pass first went non-finite.
        report: Box<qwen2_core::error::NonFiniteReport>,
    },
    /// `--detect-anomaly`: the first site of the backward pass whose gradient held inf or NaN.
    #[error(
        "backward pass went non-finite at optimizer step {step}: the gradient reaching {site} held \
         {nan} NaN and {inf} inf (in {dtype}); largest finite |grad| before it: {peak_before:.4e} at \
         {peak_site}{}",
        match scale {
            Some(s) => format!("; loss scale {s}: a scale too large for f16 overflows here, and \
                                without --detect-anomaly the step is skipped and the scale backs off"),
            None => "; try --precision f16-scaled, bf16 or f32, or a lower --lr".to_string(),
        }
    )]
    Anomaly {
        /// 0-based optimizer step.
        step: usize,
        /// HF module path of the site.
        site: String,
        /// NaN values in the gradient there.
        nan: usize,
        /// Infinite values in the gradient there.
        inf: usize,
        /// dtype of the gradient.
        dtype: String,
        /// Largest finite |grad| at the sites before it in backward order.
        peak_before: f32,
        /// Where that was.
        peak_site: String,
        /// The loss scale, under `f16-scaled`.
        scale: Option<f64>,
    },
    /// Loss scaling could not find a scale at which the gradients stay finite.
    #[error("training diverged at step {step}: {what} (loss scale {scale}, {skipped} steps skipped in a row). \
             Remedies, in order: a lower --lr, a smaller --batch-size, --precision bf16 where the \
             device has it, or --precision f32")]
    Diverged {
        /// 0-based optimizer step.
        step: usize,
        /// What tripped: too many skipped steps or the scale below its minimum.
        what: String,
        /// The last loss scale.
        scale: f64,
        /// Consecutive skipped steps.
        skipped: usize,
    },
    /// Training was interrupted (Ctrl-C) after saving a checkpoint.
    #[error("interrupted at step {step}; checkpoint saved in {checkpoint}")]
    Interrupted {
        /// Steps completed.
        step: usize,
        /// Where the state was saved (resume with `--resume`).
        checkpoint: PathBuf,
    },
}

impl TrainError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }

    /// An invalid option.
    pub fn option(option: &str, message: impl Into<String>) -> Self {
        TrainError::Option {
            option: option.into(),
            message: message.into(),
        }
    }
}

/// Result with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;
