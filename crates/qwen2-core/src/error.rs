//! The one error type of the core crate. Every variant names the file, tensor or field at fault.

use std::path::PathBuf;

/// Result alias used across the core crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading or running a Qwen2 model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or memory-mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (config.json, the shard index, ...) is not valid JSON or has the wrong shape.
    #[error("invalid JSON in {path}: {source}")]
    Json {
        /// The file involved.
        path: PathBuf,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },

    /// A config field is missing or holds a value that cannot work.
    #[error("{path}: field `{field}`: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The HF field name.
        field: String,
        /// What is wrong with it.
        message: String,
    },

    /// The checkpoint asks for something this engine does not implement; running it anyway
    /// would silently compute something else.
    #[error("{path}: unsupported {what}")]
    Unsupported {
        /// The config file.
        path: PathBuf,
        /// What is unsupported, and why.
        what: String,
    },

    /// A safetensors file is truncated, corrupt or not safetensors at all.
    #[error("corrupt safetensors file {path}: {message}")]
    Safetensors {
        /// The file involved.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },

    /// A tensor the graph needs is in none of the checkpoint's files.
    #[error("tensor `{name}` is missing from {location}")]
    MissingTensor {
        /// HF tensor name, e.g. `model.layers.0.self_attn.q_proj.weight`.
        name: String,
        /// The file (or files) searched.
        location: String,
    },

    /// A tensor has a shape that does not match config.json.
    #[error(
        "tensor `{name}` in {path} has shape {found:?}, expected {expected:?} (from config.json)"
    )]
    TensorShape {
        /// HF tensor name.
        name: String,
        /// The file holding it.
        path: PathBuf,
        /// Shape expected from the config.
        expected: Vec<usize>,
        /// Shape found on disk.
        found: Vec<usize>,
    },

    /// A tensor is stored in a dtype the loader cannot convert exactly.
    #[error("tensor `{name}` in {path} has dtype {dtype}; only F32, BF16 and F16 are supported")]
    TensorDtype {
        /// HF tensor name.
        name: String,
        /// The file holding it.
        path: PathBuf,
        /// The dtype found on disk.
        dtype: String,
    },

    /// A token id is outside the vocabulary.
    #[error("token id {id} at position {position} is out of range: the vocabulary has {vocab_size} ids (0..{vocab_size})")]
    TokenOutOfRange {
        /// The bad id.
        id: u32,
        /// Its index in the input.
        position: usize,
        /// `vocab_size` from config.json.
        vocab_size: usize,
    },

    /// The prompt (plus what is already cached, plus what is to be generated) does not fit.
    #[error("{requested} positions requested but the context holds {capacity} ({limit})")]
    ContextOverflow {
        /// Positions the call needs.
        requested: usize,
        /// Positions available.
        capacity: usize,
        /// Which limit applies (max_position_embeddings or the KV cache size).
        limit: String,
    },

    /// The input is empty where at least one token is needed.
    #[error("empty input: at least one token id is needed")]
    EmptyInput,

    /// The logits of a step hold NaN or inf: no token is sampled from them.
    #[error(
        "non-finite logits at generation step {step} ({nan} NaN, {inf} inf): refusing to sample"
    )]
    NonFiniteLogits {
        /// 0 is the prefill, 1.. the decode steps.
        step: usize,
        /// NaN count.
        nan: usize,
        /// inf count.
        inf: usize,
    },

    /// A tensor went non-finite (inf or NaN) inside the forward pass.
    #[error("{0}")]
    NonFinite(Box<NonFiniteReport>),

    /// A tokenizer file is missing, unreadable or not a `tokenizers` JSON file, or text could
    /// not be encoded / ids could not be decoded with it.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    /// A chat template failed to parse or to render.
    #[error("chat template from {origin}: {message}")]
    ChatTemplate {
        /// Where the template came from (a file, or the built-in ChatML template).
        origin: String,
        /// What minijinja (or the template's own `raise_exception`) said.
        message: String,
    },

    /// A weight holds NaN or inf values: the checkpoint itself is broken.
    #[error(
        "tensor {name} in {path} holds {count} NaN/inf values (of {of}): the checkpoint is broken \
             (re-download or re-convert it); no precision setting can fix this"
    )]
    BrokenTensor {
        /// HF tensor name.
        name: String,
        /// The file holding it.
        path: PathBuf,
        /// Non-finite values.
        count: usize,
        /// Values in the tensor.
        of: usize,
    },
    /// A LoRA adapter that cannot be read or does not fit the base model.
    #[error("adapter {path}: {message}")]
    Adapter {
        /// The adapter directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A GGUF file could not be opened or read (corrupt, truncated, a split set incomplete, a
    /// metadata key missing or of the wrong type); the message names the file and key.
    #[error("{0}")]
    Gguf(#[from] qwen2_gguf::GgufError),
    /// A tensor of a GGUF model cannot be loaded (an unsupported ggml type, bad data).
    #[error("tensor `{name}` (GGUF `{gguf_name}`) in {path}: {message}")]
    GgufTensor {
        /// HF tensor name.
        name: String,
        /// The tensor's name in the GGUF file.
        gguf_name: String,
        /// The GGUF file (the first shard of a split set).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A plan or option that cannot run on the chosen device.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Where a forward pass first went non-finite: the first op, in execution order, whose output
/// held an inf or NaN.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "non-finite values at {site} (layer {layer}, held in {dtype}: {nan} NaN, {inf} inf) at generation step {step}; \
     largest finite |x| before it: {peak_before:.4e} at {peak_site}; \
     try a safer --precision (f16-safe or f32) or --on-nonfinite fallback"
)]
pub struct NonFiniteReport {
    /// HF module path of the first non-finite op, e.g. `model.layers.0.mlp.down_proj`.
    pub site: String,
    /// Its decoder layer (`-` outside the layers).
    pub layer: String,
    /// The dtype that held its output.
    pub dtype: String,
    /// NaN count in that output.
    pub nan: usize,
    /// inf count in that output.
    pub inf: usize,
    /// Largest finite |x| observed before it.
    pub peak_before: f32,
    /// Where that peak was observed.
    pub peak_site: String,
    /// 0 is the prefill, 1.. the decode steps.
    pub step: usize,
}
