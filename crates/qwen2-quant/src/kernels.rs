//! The table of row kernels: one safe fn per (weight type, kernel path).

use qwen2_gguf::GgmlType;

use crate::activation::{BlockQ8K, BlockQ8_0, BlockQ8_1};
use crate::dispatch::KernelPath;
use crate::error::{QuantError, Result};
use crate::portable;
use crate::quads::Q8_0Quad;

/// Dot products of weight rows (`w`: whole rows of `row_bytes` bytes) with activation rows
/// (`xs`, each holding the activations for one weight row): `out[j * stride + i] = w_j · x_i`.
/// The SIMD kernels load each weight block once per group of 4 activation rows, and with one
/// activation row take 4 consecutive weight rows per call; the result for a (weight row,
/// activation row) never depends on the other rows.
pub(crate) type RowsFn<A> =
    fn(w: &[u8], row_bytes: usize, xs: &[&[A]], out: &mut [f32], stride: usize);

/// A weight type's row kernel, typed by the activation layout it takes.
#[derive(Clone, Copy)]
pub(crate) enum RowKernel {
    /// Q8_0 blocks (portable Q4_0/Q5_0/Q8_0).
    Q8_0(RowsFn<BlockQ8_0>),
    /// Q8_0 blocks in quads (SIMD Q4_0/Q5_0/Q8_0).
    Q8_0Quads(RowsFn<Q8_0Quad>),
    /// Q8_1 blocks (Q4_1/Q5_1).
    Q8_1(RowsFn<BlockQ8_1>),
    /// Q8_K blocks (the k-quants).
    Q8K(RowsFn<BlockQ8K>),
}

/// Defines a portable [`RowsFn`] from a one-row dot `fn(&[u8], &[A]) -> f32`.
macro_rules! portable_rows {
    ($name:ident, $act:ty, $dot:path) => {
        fn $name(w: &[u8], row_bytes: usize, xs: &[&[$act]], out: &mut [f32], stride: usize) {
            for (j, row) in w.chunks_exact(row_bytes).enumerate() {
                for (i, x) in xs.iter().enumerate() {
                    out[j * stride + i] = $dot(row, x);
                }
            }
        }
    };
}

portable_rows!(portable_q8_0, BlockQ8_0, portable::dot_q8_0);
portable_rows!(portable_q4_0, BlockQ8_0, portable::dot_q4_0);
portable_rows!(portable_q5_0, BlockQ8_0, portable::dot_q5_0);
portable_rows!(portable_q4_1, BlockQ8_1, portable::dot_q4_1);
portable_rows!(portable_q5_1, BlockQ8_1, portable::dot_q5_1);
portable_rows!(portable_q2_k, BlockQ8K, portable::dot_q2_k);
portable_rows!(portable_q3_k, BlockQ8K, portable::dot_q3_k);
portable_rows!(portable_q4_k, BlockQ8K, portable::dot_q4_k);
portable_rows!(portable_q5_k, BlockQ8K, portable::dot_q5_k);
portable_rows!(portable_q6_k, BlockQ8K, portable::dot_q6_k);

/// The row kernel for `weight_type` on `path`.
pub(crate) fn select(weight_type: GgmlType, path: KernelPath) -> Result<RowKernel> {
    if !path.is_available() {
        return Err(QuantError::PathUnavailable(path));
    }
    if path == KernelPath::Portable {
        return portable_kernel(weight_type);
    }
    simd_kernel(weight_type, path)
}

fn portable_kernel(weight_type: GgmlType) -> Result<RowKernel> {
    use GgmlType::*;
    Ok(match weight_type {
        Q8_0 => RowKernel::Q8_0(portable_q8_0),
        Q4_0 => RowKernel::Q8_0(portable_q4_0),
        Q5_0 => RowKernel::Q8_0(portable_q5_0),
        Q4_1 => RowKernel::Q8_1(portable_q4_1),
        Q5_1 => RowKernel::Q8_1(portable_q5_1),
        Q2_K => RowKernel::Q8K(portable_q2_k),
        Q3_K => RowKernel::Q8K(portable_q3_k),
        Q4_K => RowKernel::Q8K(portable_q4_k),
        Q5_K => RowKernel::Q8K(portable_q5_k),
        Q6_K => RowKernel::Q8K(portable_q6_k),
        other => return Err(QuantError::UnsupportedType(other)),
    })
}

#[cfg(target_arch = "x86_64")]
fn simd_kernel(weight_type: GgmlType, path: KernelPath) -> Result<RowKernel> {
    use crate::x86;
    use GgmlType::*;
    let kernel = match weight_type {
        Q8_0 => x86::q8_0::kernel(path).map(RowKernel::Q8_0Quads),
        Q4_0 => x86::q4_0::kernel(path).map(RowKernel::Q8_0Quads),
        Q5_0 => x86::q5_0::kernel(path).map(RowKernel::Q8_0Quads),
        Q4_1 => x86::q4_1::kernel(path).map(RowKernel::Q8_1),
        Q5_1 => x86::q5_1::kernel(path).map(RowKernel::Q8_1),
        Q2_K => x86::q2_k::kernel(path).map(RowKernel::Q8K),
        Q3_K => x86::q3_k::kernel(path).map(RowKernel::Q8K),
        Q4_K => x86::q4_k::kernel(path).map(RowKernel::Q8K),
        Q5_K => x86::q5_k::kernel(path).map(RowKernel::Q8K),
        Q6_K => x86::q6_k::kernel(path).map(RowKernel::Q8K),
        other => return Err(QuantError::UnsupportedType(other)),
    };
    kernel.ok_or(QuantError::PathUnavailable(path))
}

#[cfg(not(target_arch = "x86_64"))]
fn simd_kernel(weight_type: GgmlType, path: KernelPath) -> Result<RowKernel> {
    let _ = weight_type;
    Err(QuantError::PathUnavailable(path))
}
