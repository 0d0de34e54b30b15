//! AVX2 / VNNI dot products of the signed 32-element block types Q4_0, Q5_0 and Q8_0 with Q8_0
//! activations in the quad layout of [`Q8_0Quad`] (llama.cpp's
//! `ggml_vec_dot_q{4_0,5_0,8_0}_q8_0` semantics: an exact integer dot per block, scaled by
//! `d_w · d_x` in f32).
//!
//! The weights are unpacked as *unsigned* bytes (`q + offset`) in the layout of the quads
//! (elements 0..16 of each block, then 16..32), multiplied with `dot_u8_i8` into an i32
//! accumulator that starts at `−offset · Σ x` per block ([`Q8_0Quad::neg_sums`]), converted
//! and fused-multiply-added with the per-lane scales `d_w · d_x`:
//!
//! - [`quads`] (AVX-512 VNNI + VBMI): four blocks per 512-bit vector, Q4_0/Q5_0 unpacked with
//!   two-source byte permutes of the quad's bytes (no scalar work).
//! - [`pairs`] (AVX2, and the VNNI path on CPUs without VBMI): two blocks per 256-bit vector;
//!   Q8_0 keeps the sign trick on AVX2 (`vpmaddubsw` would saturate on `w + 128`).
//!
//! Both alternate between two f32 accumulators per activation row (independent `fmadd`
//! chains), add them at the end and sum the lanes with one fixed tree
//! ([`sum_f32x8_n`](crate::x86::sum_f32x8_n)), so per activation row the operations do not
//! depend on how many rows a call takes.

mod blocks;
mod pairs;
mod quads;

use std::arch::x86_64::*;

use super::{Avx2Dot, IntDot, VnniDot};
use crate::quads::{quads_per_row, Q8_0Quad};
use blocks::{Q4_0Block, Q5_0Block, Q8_0Block};
use pairs::{dot_pair_rows, dot_pairs};
use quads::dot_quads;

/// A signed 32-element block type, read two or four consecutive blocks at a time.
trait SignedBlock {
    /// Bytes per block.
    const BYTES: usize;
    /// Whether the unpacked weights are the signed values (Q8_0) rather than `q + offset` as
    /// unsigned bytes.
    const SIGNED: bool;
    /// The weights of the two blocks at `w`: elements 0..16 of each block, then 16..32.
    ///
    /// # Safety
    /// Both blocks must be readable; AVX2 and `E`'s features must be enabled in the caller.
    unsafe fn unpack_pair<E: IntDot>(w: *const u8) -> (__m256i, __m256i);
    /// The weights of the four blocks at `w` (elements 0..16 of each block, then 16..32) and
    /// their scales as f32 (block `k`'s in lanes `4k..4k + 4`).
    ///
    /// # Safety
    /// The four blocks must be readable; AVX-512F/BW/VBMI must be enabled in the caller.
    unsafe fn unpack_quad(w: *const u8) -> (__m512i, __m512i, __m512);
    /// `neg_sums · offset` (a left shift by log2(offset)): the correction of the unsigned
    /// weights' dot.
    ///
    /// # Safety
    /// AVX2 must be enabled in the caller.
    unsafe fn correction(neg_sums: __m256i) -> __m256i;
    /// [`correction`](SignedBlock::correction) on 16 lanes.
    ///
    /// # Safety
    /// AVX-512F must be enabled in the caller.
    unsafe fn correction_512(neg_sums: __m512i) -> __m512i;
}

/// Largest block of the signed types (Q8_0), for the tail buffers.
const MAX_BLOCK_BYTES: usize = 34;

super::simd_row_kernels!(
    /// Q8_0 weights · Q8_0 activation quads.
    q8_0, Q8_0Quad, quads_per_row, 34,
    avx2 = [dot_pairs<Q8_0Block>, rows = dot_pair_rows<Q8_0Block>],
    vnni = [dot_pairs<Q8_0Block>, rows = dot_pair_rows<Q8_0Block>]
);
super::simd_row_kernels!(
    /// Q4_0 weights · Q8_0 activation quads.
    q4_0, Q8_0Quad, quads_per_row, 18,
    avx2 = [dot_pairs<Q4_0Block>, rows = dot_pair_rows<Q4_0Block>],
    vnni = [dot_pairs<Q4_0Block>, rows = dot_pair_rows<Q4_0Block>],
    vbmi = [dot_quads<Q4_0Block>]
);
super::simd_row_kernels!(
    /// Q5_0 weights · Q8_0 activation quads.
    q5_0, Q8_0Quad, quads_per_row, 22,
    avx2 = [dot_pairs<Q5_0Block>, rows = dot_pair_rows<Q5_0Block>],
    vnni = [dot_pairs<Q5_0Block>, rows = dot_pair_rows<Q5_0Block>],
    vbmi = [dot_quads<Q5_0Block>]
);

#[cfg(test)]
mod tests;
