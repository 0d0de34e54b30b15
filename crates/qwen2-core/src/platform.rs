//! The one trait every backend crate implements.

use crate::precision::{Hardware, PolicyTable};

/// A compute backend qwen2-burn can run on (CPU, wgpu, CUDA, ...).
pub trait Platform {
    /// The burn backend.
    type B: burn::prelude::Backend;

    /// The `--backend` name.
    const NAME: &'static str;

    /// The devices this backend can run on, on this machine, best first. Empty when none.
    fn devices() -> Vec<burn::tensor::Device<Self::B>>;

    /// What the device is and what it can compute.
    fn probe(device: &burn::tensor::Device<Self::B>) -> Hardware;

    /// The rules that resolve `--precision auto` on this backend.
    fn policy_table() -> &'static PolicyTable;
}
