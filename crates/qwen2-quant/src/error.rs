//! Errors of the public API: bad shapes, unsupported types, unavailable kernel paths.

use qwen2_gguf::GgmlType;

use crate::dispatch::KernelPath;

/// Errors returned by this crate's public functions (never panics on bad input).
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// The weight type has no quantized dot-product kernel here.
    #[error("no quantized dot-product kernel for weight type {0}")]
    UnsupportedType(GgmlType),
    /// A length or shape does not match what the operation needs.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The requested kernel path needs CPU features this machine lacks.
    #[error("kernel path {0} is not available on this CPU")]
    PathUnavailable(KernelPath),
    /// Memory for weights could not be mapped.
    #[error("cannot map {bytes} bytes for weights: {reason}")]
    Memory {
        /// Bytes requested.
        bytes: usize,
        /// What the system said.
        reason: String,
    },
    /// Quantizing weights with qwen2-gguf failed.
    #[error(transparent)]
    Gguf(#[from] qwen2_gguf::GgufError),
}

/// Result with [`QuantError`].
pub type Result<T> = std::result::Result<T, QuantError>;

/// A [`QuantError::Shape`] built from a message.
pub(crate) fn shape_error(message: impl Into<String>) -> QuantError {
    QuantError::Shape(message.into())
}
