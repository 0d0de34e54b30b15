//! Quantization of f32 activations to the 8-bit formats the dot products pair with, exactly as
//! llama.cpp's reference `quantize_row_q8_0_ref`, `quantize_row_q8_1_ref` and
//! `quantize_row_q8_K_ref` (same f32 operations in the same order).

use half::f16;
use qwen2_gguf::{GgmlType, QK_K};

use crate::error::{shape_error, QuantError, Result};
use crate::quads::{quad_rows, Q8_0Quad};

/// Elements per Q8_0 / Q8_1 block.
pub const QK8: usize = 32;

/// One Q8_0 activation block (`block_q8_0`): scale and 32 signed quants, value = `d * q`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Quants, `-127..=127`.
    pub qs: [i8; QK8],
}

/// One Q8_1 activation block (`block_q8_1`): Q8_0 plus `s = d * Σ qs`, for the weight types
/// with a minimum (Q4_1, Q5_1).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d * Σ qs` (rounded to f16).
    pub s: f16,
    /// Quants, `-127..=127`.
    pub qs: [i8; QK8],
}

/// One Q8_K activation block (`block_q8_K`): f32 scale, 256 quants and their sums per 16.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8K {
    /// Scale (value = `d * q`).
    pub d: f32,
    /// Quants, `-127..=127`.
    pub qs: [i8; QK_K],
    /// `bsums[j] = Σ qs[16 j .. 16 j + 16]`.
    pub bsums: [i16; QK_K / 16],
}

/// The activation format a weight type's dot product takes (llama.cpp's `vec_dot_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActivationFormat {
    /// [`BlockQ8_0`]: for Q4_0, Q5_0, Q8_0.
    Q8_0,
    /// [`BlockQ8_1`]: for Q4_1, Q5_1.
    Q8_1,
    /// [`BlockQ8K`]: for the k-quants Q2_K … Q6_K.
    Q8K,
}

impl ActivationFormat {
    /// The format weights of `weight_type` pair with, or `None` if no kernel exists for it.
    pub fn for_weight_type(weight_type: GgmlType) -> Option<ActivationFormat> {
        use GgmlType::*;
        match weight_type {
            Q4_0 | Q5_0 | Q8_0 => Some(ActivationFormat::Q8_0),
            Q4_1 | Q5_1 => Some(ActivationFormat::Q8_1),
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K => Some(ActivationFormat::Q8K),
            _ => None,
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        match self {
            ActivationFormat::Q8_0 | ActivationFormat::Q8_1 => QK8,
            ActivationFormat::Q8K => QK_K,
        }
    }
}

/// The weight types with dot-product kernels.
pub const SUPPORTED_WEIGHT_TYPES: [GgmlType; 10] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn check_multiple(len: usize, block: usize, what: &str) -> Result<()> {
    if len.is_multiple_of(block) {
        Ok(())
    } else {
        Err(shape_error(format!(
            "{len} values cannot be quantized to {what}: not a multiple of {block}"
        )))
    }
}

/// `1/d`, or 0 when `d` is 0 (`d ? 1.0f/d : 0.0f`).
fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

fn absolute_max(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, &v| m.max(v.abs()))
}

/// `quantize_row_q8_0_ref`: `d = amax / 127`, `q = roundf(x / d)` (half away from zero).
pub fn quantize_q8_0(x: &[f32]) -> Result<Vec<BlockQ8_0>> {
    check_multiple(x.len(), QK8, "Q8_0")?;
    #[cfg(target_arch = "x86_64")]
    {
        let zero = BlockQ8_0 {
            d: f16::ZERO,
            qs: [0; QK8],
        };
        let mut blocks = vec![zero; x.len() / QK8];
        if crate::x86::quantize::quantize_q8_0(x, &mut blocks, quantize_block_q8_0) {
            return Ok(blocks);
        }
    }
    Ok(quantize_q8_0_scalar(x))
}

/// [`quantize_q8_0`] in scalar code (whole blocks).
pub(crate) fn quantize_q8_0_scalar(x: &[f32]) -> Vec<BlockQ8_0> {
    x.chunks_exact(QK8).map(quantize_block_q8_0).collect()
}

pub(crate) fn quantize_block_q8_0(x: &[f32]) -> BlockQ8_0 {
    let d = absolute_max(x) / 127.0;
    let id = inverse_or_zero(d);
    BlockQ8_0 {
        d: f16::from_f32(d),
        qs: std::array::from_fn(|j| (x[j] * id).round() as i8),
    }
}

/// `quantize_row_q8_1_ref`: as Q8_0, plus `s = f16(Σ q · d)`.
pub fn quantize_q8_1(x: &[f32]) -> Result<Vec<BlockQ8_1>> {
    check_multiple(x.len(), QK8, "Q8_1")?;
    Ok(x.chunks_exact(QK8).map(quantize_block_q8_1).collect())
}

fn quantize_block_q8_1(x: &[f32]) -> BlockQ8_1 {
    let d = absolute_max(x) / 127.0;
    let id = inverse_or_zero(d);
    let qs: [i8; QK8] = std::array::from_fn(|j| (x[j] * id).round() as i8);
    let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
    BlockQ8_1 {
        d: f16::from_f32(d),
        s: f16::from_f32(sum as f32 * d),
        qs,
    }
}

/// ggml's `nearest_int` (round half to even via the 1.5·2²³ trick; exact for |x| ≤ 4194303).
#[inline]
fn nearest_int(x: f32) -> i32 {
    let biased = x + 12_582_912.0;
    (biased.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// `quantize_row_q8_K_ref`: `iscale = -127 / max` (max = the value of largest magnitude),
/// `q = min(127, nearest_int(iscale x))`, `d = 1 / iscale`, `bsums` = sums per 16. An all-zero
/// block gets `d = 0`, zero quants and zero sums.
pub fn quantize_q8_k(x: &[f32]) -> Result<Vec<BlockQ8K>> {
    check_multiple(x.len(), QK_K, "Q8_K")?;
    Ok(x.chunks_exact(QK_K).map(quantize_block_q8_k).collect())
}

fn quantize_block_q8_k(x: &[f32]) -> BlockQ8K {
    let mut block = BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; QK_K / 16],
    };
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        return block;
    }
    let iscale = -127.0 / max;
    for (q, &v) in block.qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for (sum, group) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
        *sum = group.iter().map(|&q| i16::from(q)).sum();
    }
    block.d = 1.0 / iscale;
    block
}

/// The blocks of some activation rows, in the format their weight type pairs with.
#[derive(Debug, Clone, PartialEq)]
pub enum ActivationBlocks {
    /// Q8_0 blocks, row after row.
    Q8_0(Vec<BlockQ8_0>),
    /// Q8_1 blocks, row after row.
    Q8_1(Vec<BlockQ8_1>),
    /// Q8_K blocks, row after row.
    Q8K(Vec<BlockQ8K>),
}

/// `rows` activation rows of `cols` values, each quantized once for a weight type.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedActivations {
    rows: usize,
    cols: usize,
    blocks: ActivationBlocks,
    /// Q8_0 blocks: the same blocks in the SIMD kernels' quad layout (empty otherwise).
    quads: Vec<Q8_0Quad>,
}

impl QuantizedActivations {
    /// Quantizes `x` (`rows × cols`, row-major) to the format `weight_type` pairs with.
    pub fn quantize(weight_type: GgmlType, x: &[f32], rows: usize, cols: usize) -> Result<Self> {
        let format = ActivationFormat::for_weight_type(weight_type)
            .ok_or(QuantError::UnsupportedType(weight_type))?;
        if rows.checked_mul(cols) != Some(x.len()) {
            return Err(shape_error(format!(
                "{} activation values are not {rows} rows × {cols} columns",
                x.len()
            )));
        }
        check_multiple(cols, format.block_size(), "whole blocks per row")?;
        let mut quads = Vec::new();
        let blocks = match format {
            ActivationFormat::Q8_0 => {
                let blocks = quantize_q8_0(x)?;
                quads = quad_rows(&blocks, cols / QK8);
                ActivationBlocks::Q8_0(blocks)
            }
            ActivationFormat::Q8_1 => ActivationBlocks::Q8_1(quantize_q8_1(x)?),
            ActivationFormat::Q8K => ActivationBlocks::Q8K(quantize_q8_k(x)?),
        };
        Ok(QuantizedActivations {
            rows,
            cols,
            blocks,
            quads,
        })
    }

    /// Q8_0 activations in the quad layout of the SIMD kernels (row after row,
    /// [`quads_per_row`](crate::quads::quads_per_row) each); empty for the other formats.
    pub(crate) fn quads(&self) -> &[Q8_0Quad] {
        &self.quads
    }

    /// Number of activation rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The quantized blocks.
    pub fn blocks(&self) -> &ActivationBlocks {
        &self.blocks
    }

    /// The format of the blocks.
    pub fn format(&self) -> ActivationFormat {
        match self.blocks {
            ActivationBlocks::Q8_0(_) => ActivationFormat::Q8_0,
            ActivationBlocks::Q8_1(_) => ActivationFormat::Q8_1,
            ActivationBlocks::Q8K(_) => ActivationFormat::Q8K,
        }
    }

    /// Dequantizes row `row` (`d * q`), or `None` when out of range.
    pub fn dequantize_row(&self, row: usize) -> Option<Vec<f32>> {
        if row >= self.rows {
            return None;
        }
        let per_row = self.cols / self.format().block_size();
        let range = row * per_row..(row + 1) * per_row;
        Some(match &self.blocks {
            ActivationBlocks::Q8_0(b) => b[range]
                .iter()
                .flat_map(|b| b.qs.map(|q| b.d.to_f32() * f32::from(q)))
                .collect(),
            ActivationBlocks::Q8_1(b) => b[range]
                .iter()
                .flat_map(|b| b.qs.map(|q| b.d.to_f32() * f32::from(q)))
                .collect(),
            ActivationBlocks::Q8K(b) => b[range]
                .iter()
                .flat_map(|b| b.qs.map(|q| b.d * f32::from(q)))
                .collect(),
        })
    }
}
