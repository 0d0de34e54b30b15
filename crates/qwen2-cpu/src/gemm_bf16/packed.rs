//! The outer-product form of the `vdpbf16ps` product, for many activation rows (prefill).
//!
//! The activation rows are packed once per call as pairs along `k`: `xp[q][i]` is the 32-bit
//! pair `(x[i][2q], x[i][2q + 1])`, rows padded with zeros to a multiple of 16. Sixteen
//! consecutive rows of one pair are then one 512-bit load, and a weight row's pair `w[j][2q..]`
//! is one 32-bit broadcast: `vdpbf16ps` adds `x[i][2q]·w[j][2q] + x[i][2q+1]·w[j][2q+1]` into
//! lane `i` of an accumulator that holds sixteen outputs of weight row `j`. A block of [`WR`]
//! weight rows × [`XC`] × 16 activation rows keeps 24 accumulators; each step along `k` costs
//! four loads and six broadcasts for 24 instructions, and no horizontal reduction is needed
//! (the dot-product tiles of `super::tiles` spend one per output). The weights are read in
//! place: no packing of the much larger operand.
//!
//! Numerics: every output lane adds its pair products in order along `k` (one f32 rounding
//! per pair), pass after pass: against the exact sum `|y - Σ x·w| ≤ (k / 2) · 2^-24 · Σ |x·w|`,
//! the bound of a plain f32 loop. Activation rounding, denormals: as `super::tiles`.

use std::arch::x86_64::*;
use std::mem::transmute;

use rayon::prelude::*;

use super::Input;

/// Weight rows per register block.
pub(super) const WR: usize = 6;
/// Groups of sixteen activation rows per register block.
const XC: usize = 4;
/// The longest extent of one pass along `k`, in pairs: a block's six weight rows (24 KiB)
/// stay in L1 while 64 activation rows of packed pairs (256 KiB) stream from L2.
const KP: usize = 1024;

/// Activation rows packed as pairs along `k` (see the module doc).
pub(super) struct Packed {
    /// `[k / 2][rows]` pairs of bf16 bits.
    pairs: Vec<u32>,
    /// Rows, padded to a multiple of 16.
    pub(super) rows: usize,
}

/// `x` `[m, k]` (`k` even) packed, on the rayon pool for large inputs.
///
/// # Safety
/// The CPU has AVX512-BF16 and AVX512F; `x` holds `m * k` elements.
#[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
pub(super) unsafe fn pack(x: Input<'_>, m: usize, k: usize) -> Packed {
    debug_assert!(k.is_multiple_of(2));
    let rows = m.next_multiple_of(16);
    let pairs_per_row = k / 2;
    let mut pairs = vec![0u32; pairs_per_row * rows];
    // Pairs of row `i`, as bf16 bits.
    let pair = |i: usize, q: usize| -> u32 {
        match x {
            Input::Bf16(x) => {
                let (a, b) = (x[i * k + 2 * q].to_bits(), x[i * k + 2 * q + 1].to_bits());
                a as u32 | (b as u32) << 16
            }
            Input::F32(x) => {
                let (a, b) = (x[i * k + 2 * q], x[i * k + 2 * q + 1]);
                let r = |v: f32| crate::host::round_bf16(v).to_bits() >> 16;
                r(a) | r(b) << 16
            }
        }
    };
    // Tasks of 64 pairs along `k` (each writes its own `[64][rows]` slab).
    let slab = 64 * rows;
    let fill = |(t, out): (usize, &mut [u32])| {
        let q0 = t * 64;
        for (dq, line) in out.chunks_mut(rows).enumerate() {
            for (i, p) in line[..m].iter_mut().enumerate() {
                *p = pair(i, q0 + dq);
            }
        }
    };
    if pairs.len() > slab {
        pairs.par_chunks_mut(slab).enumerate().for_each(fill);
    } else {
        pairs.chunks_mut(slab).enumerate().for_each(fill);
    }
    Packed { pairs, rows }
}

/// The sums of weight rows `0..len` (`w` holds them `ldw` apart, `k` each) with every packed
/// activation row: `sums[j * xp.rows + i]` for weight row `j`, activation row `i` (padding
/// rows included), stored on the first pass along `k` and added after.
///
/// # Safety
/// The CPU has AVX512-BF16, AVX512F and AVX512BW; `k` is even and `xp` packs `k` columns; `w`
/// holds `len` rows of `ldw ≥ k` elements; `sums` holds `len * xp.rows` elements.
#[target_feature(enable = "avx512bf16,avx512f,avx512bw")]
pub(super) unsafe fn sums(
    xp: &Packed,
    k: usize,
    w: &[half::bf16],
    ldw: usize,
    len: usize,
    sums: &mut [f32],
) {
    debug_assert!(w.len() >= (len.max(1) - 1) * ldw + k && sums.len() >= len * xp.rows);
    let pairs = k / 2;
    let passes = pairs.div_ceil(KP).max(1);
    let kp = pairs.div_ceil(passes);
    let w = w.as_ptr().cast::<u16>();
    let mut q0 = 0;
    while q0 < pairs {
        let steps = kp.min(pairs - q0);
        let first = q0 == 0;
        let mut j = 0;
        while j < len {
            let wr = (len - j).min(WR);
            let mut i = 0;
            while i < xp.rows {
                let xc = ((xp.rows - i) / 16).min(XC);
                let x = xp.pairs.as_ptr().add(q0 * xp.rows + i);
                let wrow = w.add(j * ldw + 2 * q0).cast::<u32>();
                let out = sums.as_mut_ptr().add(j * xp.rows + i);
                let block = Block {
                    x,
                    ldx: xp.rows,
                    w: wrow,
                    ldw: ldw / 2,
                    steps,
                    out,
                    ldo: xp.rows,
                    first,
                };
                dispatch(wr, xc, block);
                i += 16 * xc;
            }
            j += wr;
        }
        q0 += steps;
    }
}

/// One register block's operands.
struct Block {
    /// Packed pairs at the block's first step and row; `ldx` pairs per step.
    x: *const u32,
    ldx: usize,
    /// The first weight row's pair at the first step; rows `ldw` pairs apart (`ldw` must be
    /// whole pairs: `ldw` elements even, which holds for `k` even and padded strides).
    w: *const u32,
    ldw: usize,
    steps: usize,
    /// `out[r * ldo + 16 c + l]` for weight row `r`, activation row `16 c + l`.
    out: *mut f32,
    ldo: usize,
    first: bool,
}

/// [`kernel`] for `wr` weight rows and `xc` groups of sixteen activation rows.
#[inline(always)]
unsafe fn dispatch(wr: usize, xc: usize, b: Block) {
    macro_rules! go {
        ($($r:literal),*) => {
            match (wr, xc) {
                $(($r, 4) => kernel::<$r, 4>(b),
                  ($r, 3) => kernel::<$r, 3>(b),
                  ($r, 2) => kernel::<$r, 2>(b),
                  ($r, 1) => kernel::<$r, 1>(b),)*
                _ => unreachable!("1..=WR weight rows, 1..=XC groups"),
            }
        };
    }
    go!(1, 2, 3, 4, 5, 6)
}

/// `R × C` accumulators of sixteen lanes over `b.steps` pairs along `k`.
#[inline(always)]
unsafe fn kernel<const R: usize, const C: usize>(b: Block) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut w = [b.w; R];
    for (r, w) in w.iter_mut().enumerate() {
        *w = b.w.add(r * b.ldw);
    }
    let mut x = b.x;
    for q in 0..b.steps {
        let mut xv = [_mm512_setzero_si512(); C];
        for (c, xv) in xv.iter_mut().enumerate() {
            *xv = _mm512_loadu_si512(x.add(16 * c).cast());
        }
        for (acc, w) in acc.iter_mut().zip(&w) {
            let wv = _mm512_set1_epi32(w.add(q).read_unaligned() as i32);
            for (acc, xv) in acc.iter_mut().zip(&xv) {
                let (x, w) = (
                    transmute::<__m512i, __m512bh>(*xv),
                    transmute::<__m512i, __m512bh>(wv),
                );
                *acc = _mm512_dpbf16_ps(*acc, x, w);
            }
        }
        x = x.add(b.ldx);
    }
    for (r, acc) in acc.iter().enumerate() {
        for (c, acc) in acc.iter().enumerate() {
            let out = b.out.add(r * b.ldo + 16 * c);
            let v = if b.first {
                *acc
            } else {
                _mm512_add_ps(_mm512_loadu_ps(out), *acc)
            };
            _mm512_storeu_ps(out, v);
        }
    }
}
