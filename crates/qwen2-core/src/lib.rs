//! qwen2-core: the backend-independent part of qwen2-burn — config, checkpoint loading, the Qwen2
//! graph over any burn backend, the KV cache, precision plans, sampling, generation, the
//! tokenizer, chat templates and chat sessions.

pub mod adapter;
pub mod chat;
pub mod config;
pub mod diagnose;
pub mod engine;
pub mod error;
pub mod fallback;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod model;
pub mod monitor;
pub mod observe;
pub mod platform;
pub mod precision;
pub mod sampling;
pub mod source;
pub mod text;
pub mod train_kernels;
pub mod weights;

pub use config::Qwen2Config;
pub use error::{Error, Result};
pub use kv_cache::KvCache;
pub use model::{LogitsFor, Qwen2Model};
pub use platform::{DeviceMemory, Platform};
pub use precision::{Policy, PrecisionPlan};
pub use source::ModelSource;

/// Re-export of the burn version the graph is written against.
pub use burn;
/// The quantized CPU kernels (kernel paths, `QuantMatrix`), for reports and benchmarks.
pub use qwen2_quant;
