//! Conversion of checkpoint bytes (f32, bf16, f16 on disk) to the plan's dtype, exact where
//! the dtype allows, with the transpose of 2-D weights; into vectors marked for huge pages.

use burn::tensor::{FloatDType, TensorData};
use half::{bf16, f16};

use crate::error::{Error, Result};

/// The `[rows, cols]` a transpose works on and the shape of the result: `expected` as is, or
/// a 2-D `[r, c]` as `[c, r]` when `transpose` is set.
pub(super) fn layout(expected: &[usize], transpose: bool) -> (usize, usize, Vec<usize>) {
    match (transpose, expected) {
        (true, [r, c]) => (*r, *c, vec![*c, *r]),
        _ => (1, expected.iter().product(), expected.to_vec()),
    }
}

/// Row-major f32 `values` of HF shape `expected` (a dequantized GGUF tensor) converted to
/// `dtype` (exactly for f32, round-to-nearest-even for bf16/f16), a 2-D `[out, in]` transposed
/// to `[in, out]` when `transpose` is set.
pub(crate) fn tensor_data_from_f32(
    values: Vec<f32>,
    expected: &[usize],
    dtype: FloatDType,
    transpose: bool,
) -> Result<TensorData> {
    let (rows, cols, shape) = layout(expected, transpose);
    fn arrange<T: Copy + Default>(v: Vec<T>, t: bool, rows: usize, cols: usize) -> Vec<T> {
        if t {
            transposed(v, rows, cols)
        } else {
            v
        }
    }
    Ok(match dtype {
        FloatDType::F32 => TensorData::new(arrange(values, transpose, rows, cols), shape),
        FloatDType::BF16 => {
            let v: Vec<bf16> = values.into_iter().map(bf16::from_f32).collect();
            TensorData::new(arrange(v, transpose, rows, cols), shape)
        }
        FloatDType::F16 => {
            let v: Vec<f16> = values.into_iter().map(f16::from_f32).collect();
            TensorData::new(arrange(v, transpose, rows, cols), shape)
        }
        other => {
            return Err(Error::Invalid(format!(
                "cannot store weights as {other:?}: use f32, bf16 or f16"
            )))
        }
    })
}

/// [`convert`] to f32 (exact from every source dtype).
pub(super) fn widen(
    bytes: &[u8],
    source: SourceDtype,
    rows: usize,
    cols: usize,
    transpose: bool,
) -> Vec<f32> {
    convert(
        bytes,
        source,
        rows,
        cols,
        transpose,
        |x| x,
        |b| f32::from_bits((b as u32) << 16),
        |b| f16::from_bits(b).to_f32(),
    )
}

#[derive(Clone, Copy)]
pub(super) enum SourceDtype {
    F32,
    Bf16,
    F16,
}

/// NaN and inf values in little-endian `bytes` of `source` dtype (exponent bits all ones).
pub(super) fn count_nonfinite(bytes: &[u8], source: SourceDtype) -> usize {
    let half = |mask: u16| {
        bytes
            .chunks_exact(2)
            .filter(|c| u16::from_le_bytes([c[0], c[1]]) & mask == mask)
            .count()
    };
    match source {
        SourceDtype::F32 => bytes
            .chunks_exact(4)
            .filter(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7F80_0000 == 0x7F80_0000)
            .count(),
        SourceDtype::Bf16 => half(0x7F80),
        SourceDtype::F16 => half(0x7C00),
    }
}

/// Converts little-endian `bytes` of `source` dtype into `T`, transposing a `[rows, cols]`
/// matrix when asked. The three closures convert from f32, bf16 bits and f16 bits.
#[allow(clippy::too_many_arguments)]
pub(super) fn convert<T: Copy + Default>(
    bytes: &[u8],
    source: SourceDtype,
    rows: usize,
    cols: usize,
    transpose: bool,
    from_f32: impl Fn(f32) -> T,
    from_bf16: impl Fn(u16) -> T,
    from_f16: impl Fn(u16) -> T,
) -> Vec<T> {
    // Weights in huge pages where the system has them (decode streams them faster).
    let size = match source {
        SourceDtype::F32 => 4,
        SourceDtype::Bf16 | SourceDtype::F16 => 2,
    };
    let mut values = if transpose {
        Vec::with_capacity(bytes.len() / size)
    } else {
        qwen2_quant::huge_vec(bytes.len() / size)
    };
    match source {
        SourceDtype::F32 => values.extend(
            bytes
                .chunks_exact(4)
                .map(|c| from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        ),
        SourceDtype::Bf16 => values.extend(
            bytes
                .chunks_exact(2)
                .map(|c| from_bf16(u16::from_le_bytes([c[0], c[1]]))),
        ),
        SourceDtype::F16 => values.extend(
            bytes
                .chunks_exact(2)
                .map(|c| from_f16(u16::from_le_bytes([c[0], c[1]]))),
        ),
    }
    if !transpose {
        return values;
    }
    transposed(values, rows, cols)
}

/// A row-major `[rows, cols]` matrix as `[cols, rows]`, in cache-sized blocks.
pub(super) fn transposed<T: Copy + Default>(values: Vec<T>, rows: usize, cols: usize) -> Vec<T> {
    let mut out = qwen2_quant::huge_vec(values.len());
    out.resize(values.len(), T::default());
    const BLOCK: usize = 32;
    for r0 in (0..rows).step_by(BLOCK) {
        for c0 in (0..cols).step_by(BLOCK) {
            for r in r0..(r0 + BLOCK).min(rows) {
                for c in c0..(c0 + BLOCK).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
    out
}
