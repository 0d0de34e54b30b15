//! Causal grouped-query attention over the KV cache, on host memory.
//!
//! Work is split into (key/value head, block of query rows) tasks. A task takes the query rows
//! of every head that shares its key/value head (`group × rows` rows) through the
//! register-blocked product of [`crate::gemm`]: scores against the keys its rows can see, a
//! softmax per row, then the probabilities against the transposed values. Sharing the keys
//! across the group and the rows of a block is what makes this several times faster than one
//! dot product per (row, key); a decode step is one block. Everything rounds to the plan's
//! dtypes at the points the graph does.

use rayon::prelude::*;

use crate::fused::exp_nonpositive;
use crate::gemm::{matmul_rows_serial, Lanes};
use crate::gemv::Weight;
use crate::host::Round;

/// Query rows per task (prefill); a decode step is a single row.
const ROWS_PER_TASK: usize = 32;

/// Rows of a `[heads, positions, head_dim]` cache view, read in place: elements of `E` at
/// `offset + head * head_stride + position * row_stride`, each row contiguous.
pub(crate) struct HeadRows<'a, E> {
    data: &'a [E],
    offset: usize,
    head_stride: usize,
    row_stride: usize,
}

impl<'a, E: Weight> HeadRows<'a, E> {
    /// The view's rows in `p`'s storage, if `p` holds `E` with contiguous, forward rows.
    pub(crate) fn of(p: &'a burn_flex::FlexTensor) -> Option<Self> {
        let strides = p.layout().strides();
        let forward = strides[2] == 1 && strides[0] >= 0 && strides[1] >= 0;
        (p.dtype() == E::dtype() && forward).then(|| HeadRows {
            data: p.storage::<E>(),
            offset: p.layout().start_offset(),
            head_stride: strides[0] as usize,
            row_stride: strides[1] as usize,
        })
    }

    /// Contiguous `[heads, rows, dim]` data.
    pub(crate) fn contiguous(data: &'a [E], rows: usize, dim: usize) -> Self {
        HeadRows {
            data,
            offset: 0,
            head_stride: rows * dim,
            row_stride: dim,
        }
    }

    /// Rows `0..rows` of `head` as one slice, when they are adjacent in memory.
    fn head_slice(&self, head: usize, rows: usize, dim: usize) -> Option<&[E]> {
        let at = self.offset + head * self.head_stride;
        (self.row_stride == dim).then(|| &self.data[at..at + rows * dim])
    }

    #[inline(always)]
    fn row(&self, head: usize, position: usize, dim: usize) -> &[E] {
        let at = self.offset + head * self.head_stride + position * self.row_stride;
        &self.data[at..at + dim]
    }
}

/// What every task shares.
pub(crate) struct AttentionParams<'a> {
    /// Rotated queries, `[seq, heads * head_dim]`, rounded to the scores dtype.
    pub q: &'a [f32],
    /// Query heads.
    pub heads: usize,
    /// Head dimension.
    pub dim: usize,
    /// Query heads per key/value head.
    pub group: usize,
    /// Positions already in the cache before this call.
    pub start: usize,
    /// `1/sqrt(head_dim)`, in the scores dtype.
    pub scale: f32,
    /// Rounding to `plan.attention_scores`.
    pub scores_round: Round,
    /// Rounding to `plan.matmul` (probabilities, values, output).
    pub matmul_round: Round,
}

/// Every (query row, head) of `out` (`[seq, heads * head_dim]`), split across the pool.
pub(crate) fn attend_all<E: Lanes>(
    p: &AttentionParams,
    keys: &HeadRows<E>,
    values: &HeadRows<E>,
    out: &mut [f32],
) {
    let (heads, dim) = (p.heads, p.dim);
    let seq = p.q.len() / (heads * dim);
    let kv_heads = heads / p.group;
    let blocks = seq.div_ceil(ROWS_PER_TASK);
    let results: Vec<(usize, std::ops::Range<usize>, Vec<f32>)> = (0..kv_heads * blocks)
        .into_par_iter()
        .map(|task| {
            let (kv, block) = (task / blocks, task % blocks);
            let rows = block * ROWS_PER_TASK..((block + 1) * ROWS_PER_TASK).min(seq);
            let o = attend_group(p, keys, values, kv, rows.clone());
            (kv, rows, o)
        })
        .collect();
    for (kv, rows, o) in results {
        let n = rows.len();
        for (r, values) in o.chunks_exact(dim).enumerate() {
            let (g, i) = (r / n, rows.start + r % n);
            let head = kv * p.group + g;
            out[(i * heads + head) * dim..][..dim].copy_from_slice(values);
        }
    }
}

/// Query rows `rows` of every head sharing key/value head `kv`: `[group × rows, dim]`, ordered
/// by head then row.
fn attend_group<E: Lanes>(
    p: &AttentionParams,
    keys: &HeadRows<E>,
    values: &HeadRows<E>,
    kv: usize,
    rows: std::ops::Range<usize>,
) -> Vec<f32> {
    let dim = p.dim;
    let n = rows.len();
    let m = p.group * n;
    // The last row of the block sees keys 0..seen; earlier rows see fewer (masked below).
    let seen = p.start + rows.end;
    let mut q = Vec::with_capacity(m * dim);
    for g in 0..p.group {
        let head = kv * p.group + g;
        for i in rows.clone() {
            q.extend_from_slice(&p.q[(i * p.heads + head) * dim..][..dim]);
        }
    }
    let exact_scores = p.scores_round == Round::Bf16;
    let mut probs = match keys.head_slice(kv, seen, dim) {
        Some(k) => product(&q, m, dim, k, seen, exact_scores),
        None => {
            let mut k = Vec::with_capacity(seen * dim);
            for j in 0..seen {
                k.extend(keys.row(kv, j, dim).iter().map(|v| v.f32()));
            }
            matmul_rows_serial(&q, m, dim, &k, seen)
        }
    };
    for (r, scores) in probs.chunks_exact_mut(seen).enumerate() {
        let visible = p.start + rows.start + r % n + 1;
        let (visible, masked) = scores.split_at_mut(visible);
        softmax_row(p, visible);
        masked.fill(0.0);
    }
    // Values transposed to `[dim, seen]` rows for the second product.
    let mut vt = vec![E::default(); dim * seen];
    for j in 0..seen {
        for (d, &v) in values.row(kv, j, dim).iter().enumerate() {
            vt[d * seen + j] = v;
        }
    }
    let mut out = product(&probs, m, seen, &vt, dim, p.matmul_round == Round::Bf16);
    if p.matmul_round != Round::F32 {
        out.iter_mut().for_each(|o| *o = p.matmul_round.apply(*o));
    }
    out
}

/// `x` `[m, k]` × `w` `[n, k]`ᵀ on the calling thread: through the `vdpbf16ps` tiles when `w`
/// is bf16 and `x` holds bf16 values (`x_bf16`: the tiles round `x` to bf16, exact then), else
/// `crate::gemm`'s f32 blocks. The sums differ only in their f32 summation order.
fn product<E: Lanes>(x: &[f32], m: usize, k: usize, w: &[E], n: usize, x_bf16: bool) -> Vec<f32> {
    E::as_bf16(w)
        .filter(|_| x_bf16)
        .and_then(|w| crate::gemm_bf16::matmul_rows_serial(x, m, k, w, n))
        .unwrap_or_else(|| matmul_rows_serial(x, m, k, w, n))
}

/// [`softmax_row_any`] compiled for AVX2 where the CPU has it (the exponential's `floor`
/// otherwise becomes a library call per element).
fn softmax_row(p: &AttentionParams, scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(p: &AttentionParams, scores: &mut [f32]) {
        softmax_row_any(p, scores)
    }
    #[cfg(target_arch = "x86_64")]
    if crate::gemm::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { avx2(p, scores) };
    }
    softmax_row_any(p, scores)
}

/// Raw `q·k` of one query row → probabilities in the matmul dtype: scores rounded and scaled
/// in the scores dtype, softmax in f32, probabilities rounded to the matmul dtype.
#[inline(always)]
fn softmax_row_any(p: &AttentionParams, scores: &mut [f32]) {
    let mut max = f32::NEG_INFINITY;
    for s in scores.iter_mut() {
        *s = p.scores_round.apply(p.scores_round.apply(*s) * p.scale);
        max = max.max(*s);
    }
    for s in scores.iter_mut() {
        *s = exp_nonpositive(*s - max);
    }
    let sum: f32 = scores.iter().sum();
    for s in scores.iter_mut() {
        *s = p.matmul_round.apply(*s / sum);
    }
}
