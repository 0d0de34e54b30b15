//! qwen2-burn: Qwen2 / Qwen2.5 inference on burn, on CPU (and, with features, on GPUs), with a
//! precision plan per operation.
//!
//! ```no_run
//! use qwen2_burn::{cpu::Cpu, core::{Platform, PrecisionPlan, Qwen2Model, LogitsFor}};
//!
//! let device = Cpu::devices().remove(0);
//! let model = Qwen2Model::<<Cpu as Platform>::B>::load("tests/fixtures/tied-f32-gqa", PrecisionPlan::F32, &device)?;
//! let mut cache = model.new_cache(64);
//! let logits = model.forward(&[1, 2, 3], &mut cache, LogitsFor::Last)?; // [1, vocab]
//! # Ok::<(), qwen2_burn::core::Error>(())
//! ```

pub use qwen2_core as core;

/// Fine-tuning (full and LoRA) on burn's autodiff.
pub use qwen2_train as train;

/// The CPU backend (feature `cpu`, on by default).
#[cfg(feature = "cpu")]
pub use qwen2_cpu as cpu;

/// The wgpu backend (feature `wgpu`): Vulkan, Metal, DX12, WebGPU.
#[cfg(feature = "wgpu")]
pub use qwen2_wgpu as wgpu;

/// The CUDA backend (feature `cuda`): the driver is loaded at run time.
#[cfg(feature = "cuda")]
pub use qwen2_cuda as cuda;
