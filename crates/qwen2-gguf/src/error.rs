//! Errors of reading, writing and (de)quantizing GGUF files: each names the file, metadata key
//! or tensor at fault and, where it helps, the offset and the expected and actual values.

use std::path::PathBuf;

/// The result type of this crate.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// An error of reading, writing or (de)quantizing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The operating system failed to open, map, read, write or rename a file.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid GGUF file (truncated, corrupt, inconsistent).
    #[error("corrupt GGUF file {path}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the field, offset and expected vs actual values.
        detail: String,
    },
    /// The file is a valid GGUF file of a kind this crate does not read (big-endian, version 1).
    #[error("unsupported GGUF file {path}: {detail}")]
    UnsupportedFile {
        /// The file.
        path: PathBuf,
        /// Why it is not supported.
        detail: String,
    },
    /// A metadata key that was asked for is not in the file.
    #[error("{path}: metadata key `{key}` is missing")]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A metadata value has a type that cannot be read as the one asked for.
    #[error("{path}: metadata key `{key}` holds {found}, expected {expected}")]
    WrongValueType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The type asked for, e.g. `an unsigned 32-bit integer`.
        expected: String,
        /// The type and (for scalars) value found, e.g. `string "llama"`.
        found: String,
    },
    /// A tensor that was asked for is not in the file or model.
    #[error("{path}: no tensor named `{name}`")]
    TensorNotFound {
        /// The file or model (first shard).
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// A tensor's ggml type cannot be (de)quantized by this crate.
    #[error("tensor `{tensor}`: ggml type {type_name} is not supported for {operation}")]
    UnsupportedTensorType {
        /// The tensor name (or a description of the buffer for free functions).
        tensor: String,
        /// The ggml type name, e.g. `IQ2_XXS`.
        type_name: String,
        /// `dequantization` or `quantization`.
        operation: &'static str,
    },
    /// A split set or directory does not resolve to exactly one complete model.
    #[error("{path}: {detail}")]
    Split {
        /// The shard or directory.
        path: PathBuf,
        /// What is missing, ambiguous or inconsistent.
        detail: String,
    },
    /// An argument passed by the caller is invalid (buffer sizes, shapes, names).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl GgufError {
    /// Builds a [`GgufError::Corrupt`] for `path`.
    pub(crate) fn corrupt(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        GgufError::Corrupt {
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// Builds a [`GgufError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GgufError::Io {
            path: path.into(),
            source,
        }
    }
}
