//! qwen2-quant: CPU kernels that multiply f32 activations by ggml-quantized weight matrices
//! without dequantizing them, as llama.cpp's `ggml_vec_dot_*` do.
//!
//! - Activations are quantized once per product to the 8-bit format the weight type pairs
//!   with ([`ActivationFormat`]): Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the
//!   k-quants — bit-exact with llama.cpp's `quantize_row_q8_{0,1,K}_ref`.
//! - Dot products per weight type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K,
//!   Q6_K) in three implementations ([`KernelPath`]): portable scalar, AVX2 and AVX-512 VNNI,
//!   picked at run time ([`best_path`], overridable with `QWEN2_QUANT_PATH`). Integer parts
//!   are exact; the paths differ only in the order of f32 operations on the per-block scale
//!   products. The SIMD kernels of the signed types (Q4_0, Q5_0, Q8_0) take the Q8_0
//!   activations rearranged in groups of four blocks with their quant sums, and multiply
//!   unsigned weights corrected by `offset · Σ x` (one `vpdpbusd` per 32 bytes).
//! - [`QuantMatrix`]: `matvec` (decode: contiguous runs of rows shared between the calling
//!   thread and the free rayon workers, small matrices on the calling thread) and `matmul`
//!   (prefill, each weight block unpacked once per 4 activation rows, parallel over output
//!   rows with rayon).

#![warn(missing_docs)]

mod activation;
mod dispatch;
mod error;
mod huge;
mod kernels;
mod matrix;
mod parallel;
mod portable;
mod quads;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use activation::{
    quantize_q8_0, quantize_q8_1, quantize_q8_k, ActivationBlocks, ActivationFormat, BlockQ8K,
    BlockQ8_0, BlockQ8_1, QuantizedActivations, QK8, SUPPORTED_WEIGHT_TYPES,
};
pub use dispatch::{available_paths, best_path, KernelPath, PATH_ENV_VAR};
pub use error::{QuantError, Result};
pub use huge::{huge_pages_wanted, huge_vec, WeightArena};
pub use matrix::{dot_rows, QuantMatrix, WeightBytes};
pub use qwen2_gguf::{GgmlType, QK_K};
