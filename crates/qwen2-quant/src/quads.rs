//! Q8_0 activation rows rearranged for the SIMD kernels of the signed 32-element weight types
//! (Q4_0, Q5_0, Q8_0): blocks in groups of four, with the f32 scales and the integer quant
//! sums the kernels' offset correction needs, prepared once per activation quantization.
//!
//! The kernels multiply *unsigned* weights (`q + offset`: Q4_0 `nibble`, Q5_0 the 5-bit
//! value, Q8_0 `w XOR 0x80`) by the signed activation quants with one `vpdpbusd` per 32 bytes,
//! and subtract `offset · Σ x` per block: `Σ (q − o)·x = Σ q·x − o·Σ x`, exact in i32. The
//! four blocks of a quad fill two 64-byte vectors as the nibble layout of Q4_0/Q5_0 unpacks
//! (low nibbles are elements 0..16, high nibbles 16..32): i32 lanes `4k..4k + 4` hold block
//! `k`'s partial sums, so one scale vector covers all four blocks. The AVX2 kernels read a quad
//! as two pairs (the 32-byte halves).

use crate::activation::{BlockQ8_0, QK8};

/// Blocks per [`Q8_0Quad`].
pub(crate) const QUAD: usize = 4;

/// Four Q8_0 activation blocks in the kernels' layout (256 bytes, cache-line aligned).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(64))]
pub(crate) struct Q8_0Quad {
    /// Elements 0..16 of block 0, then of blocks 1, 2, 3.
    pub(crate) lo: [i8; 2 * QK8],
    /// Elements 16..32 of block 0, then of blocks 1, 2, 3.
    pub(crate) hi: [i8; 2 * QK8],
    /// The scales as f32 per i32 lane: block `k`'s in lanes `4k..4k + 4`.
    pub(crate) d: [f32; 16],
    /// `−Σ qs` of block `k` in lane `4k`, zero elsewhere: shifted left by log2(offset), the
    /// initial value of the integer accumulator that corrects for the weight offset.
    pub(crate) neg_sums: [i32; 16],
}

impl Q8_0Quad {
    /// Up to four blocks; the missing ones (at the end of a row) are zero blocks.
    fn new(blocks: &[BlockQ8_0]) -> Q8_0Quad {
        let mut quad = Q8_0Quad {
            lo: [0; 2 * QK8],
            hi: [0; 2 * QK8],
            d: [0.0; 16],
            neg_sums: [0; 16],
        };
        let half = QK8 / 2;
        for (k, block) in blocks.iter().enumerate().take(QUAD) {
            quad.lo[half * k..half * (k + 1)].copy_from_slice(&block.qs[..half]);
            quad.hi[half * k..half * (k + 1)].copy_from_slice(&block.qs[half..]);
            quad.d[4 * k..4 * (k + 1)].fill(block.d.to_f32());
            quad.neg_sums[4 * k] = -block_sum(block);
        }
        quad
    }
}

/// `Σ qs` of a block (at most 32 · 127 in magnitude).
pub(crate) fn block_sum(block: &BlockQ8_0) -> i32 {
    block.qs.iter().map(|&q| i32::from(q)).sum()
}

/// Quads per activation row of `blocks_per_row` blocks (the last one padded with zero blocks).
pub(crate) fn quads_per_row(blocks_per_row: usize) -> usize {
    blocks_per_row.div_ceil(QUAD)
}

/// The quads of every row of `blocks` (rows of `blocks_per_row` blocks, row after row); quads
/// never span two rows.
pub(crate) fn quad_rows(blocks: &[BlockQ8_0], blocks_per_row: usize) -> Vec<Q8_0Quad> {
    if blocks_per_row == 0 {
        return Vec::new();
    }
    let rows = blocks.len() / blocks_per_row;
    let mut quads = Vec::with_capacity(rows * quads_per_row(blocks_per_row));
    for row in blocks.chunks_exact(blocks_per_row) {
        quads.extend(row.chunks(QUAD).map(Q8_0Quad::new));
    }
    quads
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::quantize_q8_0;

    #[test]
    fn quads_hold_the_blocks_halves_scales_and_sums() {
        let x: Vec<f32> = (0..2 * 6 * 32)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let blocks = quantize_q8_0(&x).unwrap();
        // Two rows of six blocks: two quads per row, the second one half zero.
        let quads = quad_rows(&blocks, 6);
        assert_eq!(quads.len(), 4);
        for (row, row_quads) in quads.chunks(2).enumerate() {
            for (q, quad) in row_quads.iter().enumerate() {
                for k in 0..QUAD {
                    let (lo, hi) = (
                        &quad.lo[16 * k..16 * (k + 1)],
                        &quad.hi[16 * k..16 * (k + 1)],
                    );
                    let lanes = &quad.neg_sums[4 * k..4 * (k + 1)];
                    assert_eq!(&lanes[1..], &[0; 3]);
                    if 4 * q + k < 6 {
                        let block = &blocks[6 * row + 4 * q + k];
                        assert_eq!(lo, &block.qs[..16]);
                        assert_eq!(hi, &block.qs[16..]);
                        assert_eq!(quad.d[4 * k..4 * (k + 1)], [block.d.to_f32(); 4]);
                        assert_eq!(lanes[0], -block_sum(block));
                    } else {
                        assert!(lo.iter().chain(hi).all(|&v| v == 0));
                        assert_eq!(quad.d[4 * k..4 * (k + 1)], [0.0; 4]);
                        assert_eq!(lanes[0], 0);
                    }
                }
            }
        }
        assert_eq!(std::mem::size_of::<Q8_0Quad>(), 256);
    }
}
