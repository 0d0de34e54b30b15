//! Tensor infos and views of tensor data.
//!
//! # Dimension order
//!
//! GGUF stores dimensions in ggml order: `dims[0]` (`ne[0]`) is the contiguous, innermost
//! dimension. A row-major array (PyTorch/NumPy/safetensors order) has the dimensions reversed:
//! a matrix with `dims = [ne0, ne1]` is a row-major `[rows, cols] = [ne1, ne0]` array, e.g. a
//! linear layer's weight `[out_features, in_features]` is stored as
//! `dims = [in_features, out_features]`. [`TensorInfo::shape`] gives the row-major shape.
//! Quantization blocks run along `ne[0]`, so each row holds a whole number of blocks.

use crate::dequant;
use crate::error::{GgufError, Result};
use crate::ggml_type::GgmlType;

/// Where a tensor is and what it holds, as described by the file's tensor info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    ggml_type: GgmlType,
    dims: Vec<u64>,
    offset: u64,
    n_elements: u64,
    n_bytes: u64,
}

impl TensorInfo {
    /// Validates and builds an info: the element count and byte size must not overflow and
    /// `dims[0]` must be a multiple of the type's block size. `offset` is relative to the
    /// start of the data section. The error string names the tensor.
    pub(crate) fn new(
        name: String,
        ggml_type: GgmlType,
        dims: Vec<u64>,
        offset: u64,
    ) -> std::result::Result<Self, String> {
        let mut n_elements: u64 = 1;
        for &d in &dims {
            if d > i64::MAX as u64 {
                return Err(format!(
                    "tensor `{name}`: dimension {d} in {dims:?} is too large"
                ));
            }
            n_elements = n_elements.checked_mul(d).ok_or_else(|| {
                format!("tensor `{name}`: element count of dims {dims:?} overflows")
            })?;
        }
        let block = ggml_type.block_size() as u64;
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(block) {
            return Err(format!(
                "tensor `{name}`: ne[0] = {row} (dims {dims:?}) is not a multiple of the \
                 {ggml_type} block size {block}"
            ));
        }
        let n_bytes = ggml_type.bytes_for(n_elements).ok_or_else(|| {
            format!("tensor `{name}`: byte size of {ggml_type} dims {dims:?} overflows")
        })?;
        Ok(TensorInfo {
            name,
            ggml_type,
            dims,
            offset,
            n_elements,
            n_bytes,
        })
    }

    /// Moves the tensor to data offset `offset` (for the writer).
    pub(crate) fn set_offset(&mut self, offset: u64) {
        self.offset = offset;
    }

    /// The tensor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ggml type of the stored data.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// The dimensions in GGUF/ggml order (`dims[0]` innermost); see the module docs.
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// The row-major shape (the dims reversed), e.g. `[rows, cols] = [ne1, ne0]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// The data offset, relative to the start of the file's data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The number of elements (the product of the dims).
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// The number of bytes of stored data.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }
}

/// A tensor's info together with its stored bytes (a slice of the memory-mapped file).
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    info: &'a TensorInfo,
    data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// A view; `data` must be the tensor's `n_bytes` bytes.
    pub(crate) fn new(info: &'a TensorInfo, data: &'a [u8]) -> Self {
        debug_assert_eq!(data.len() as u64, info.n_bytes());
        TensorView { info, data }
    }

    /// The tensor info.
    pub fn info(&self) -> &'a TensorInfo {
        self.info
    }

    /// The tensor's name.
    pub fn name(&self) -> &'a str {
        self.info.name()
    }

    /// The ggml type of the stored data.
    pub fn ggml_type(&self) -> GgmlType {
        self.info.ggml_type()
    }

    /// The dimensions in GGUF order (`dims[0]` innermost).
    pub fn dims(&self) -> &'a [u64] {
        self.info.dims()
    }

    /// The row-major shape.
    pub fn shape(&self) -> Vec<usize> {
        self.info.shape()
    }

    /// The number of elements.
    pub fn n_elements(&self) -> u64 {
        self.info.n_elements()
    }

    /// The stored bytes, exactly as in the file.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The values dequantized to f32, in row-major order (ggml order flattened).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let n = usize::try_from(self.n_elements()).map_err(|_| {
            GgufError::InvalidArgument(format!(
                "tensor `{}` has too many elements for this platform",
                self.name()
            ))
        })?;
        let mut out = vec![0f32; n];
        self.dequantize_into(&mut out)?;
        Ok(out)
    }

    /// Dequantizes into `out`, which must have exactly `n_elements` values.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        dequant::dequantize_into(self.ggml_type(), self.data, out).map_err(|e| match e {
            GgufError::UnsupportedTensorType {
                type_name,
                operation,
                ..
            } => GgufError::UnsupportedTensorType {
                tensor: self.name().to_string(),
                type_name,
                operation,
            },
            GgufError::InvalidArgument(detail) => {
                GgufError::InvalidArgument(format!("tensor `{}`: {detail}", self.name()))
            }
            other => other,
        })
    }
}
