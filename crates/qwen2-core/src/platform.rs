//! The one trait every backend crate implements.

use burn::prelude::Backend;

/// A compute backend qwen2-burn can run on (CPU, wgpu, CUDA, ...).
pub trait Platform {
    /// The burn backend.
    type B: Backend;

    /// The `--backend` name.
    const NAME: &'static str;

    /// The devices this backend can run on, on this machine, best first. Empty when none.
    fn devices() -> Vec<burn::tensor::Device<Self::B>>;

    /// A one-line description of `device` for logs and `doctor`.
    fn describe(device: &burn::tensor::Device<Self::B>) -> String;
}
