//! qwen2-gguf: reading and writing GGUF files and (de)quantizing ggml tensor types, bit-exact
//! with llama.cpp's `gguf` Python package.
//!
//! - [`GgufFile`]: one GGUF v2/v3 file, memory-mapped, validated against its size on open;
//!   typed metadata getters ([`Metadata`]); tensor bytes as slices of the map ([`TensorView`]).
//! - [`GgufModel`]: a single file or a `gguf-split` set (`NAME-00001-of-0000N.gguf`), opened
//!   from a file or a directory, with tensor lookup across shards.
//! - [`dequantize`] / [`dequantize_into`]: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K,
//!   Q3_K, Q4_K, Q5_K, Q6_K to f32.
//! - [`quantize`] / [`quantize_into`]: f32 to F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//!   Q4_K, Q6_K.
//! - [`GgufWriter`]: writes GGUF v3 atomically (temporary file, then rename).
//!
//! Dimension order: GGUF `dims[0]` is the innermost dimension; a matrix with
//! `dims = [ne0, ne1]` is row-major `[ne1, ne0]` (see [`tensor`]).

#![warn(missing_docs)]

mod byte_reader;
pub mod dequant;
mod error;
mod file;
mod ggml_type;
mod metadata;
mod metadata_from;
mod metadata_map;
mod model;
mod parse;
pub mod quant;
pub mod tensor;
mod writer;

pub use dequant::{dequantize, dequantize_into, dequantize_to_bf16, dequantize_to_f16};
pub use error::{GgufError, Result};
pub use file::{release_mapped_pages, GgufFile, SharedBytes};
pub use ggml_type::{GgmlType, QK_K};
pub use metadata::{MetadataArray, MetadataValue, MetadataValueType};
pub use metadata_map::Metadata;
pub use model::{
    parse_split_file_name, split_file_name, GgufModel, SPLIT_COUNT_KEY, SPLIT_NO_KEY,
    SPLIT_TENSORS_COUNT_KEY,
};
pub use parse::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};
pub use quant::{f32_to_bf16_bits, quantize, quantize_into};
pub use tensor::{TensorInfo, TensorView};
pub use writer::{GgufWriter, MAX_TENSOR_NAME_BYTES, WRITTEN_VERSION};
