//! Causal grouped-query attention over the KV cache, on host memory.
//!
//! Decode (and short prompts) take one (query row, head) task at a time: scores against every
//! visible key, softmax, weighted values. Longer prompts go head by head through the
//! register-blocked product of [`crate::gemm`] (all query rows of a head against all its keys,
//! then the probabilities against the transposed values), which runs several times faster than
//! row-by-row dot products. Both round to the plan's dtypes at the points the graph does.

use burn::tensor::DType;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::fused::exp_nonpositive;
use crate::gemm::{matmul_rows_serial, Lanes};
use crate::gemv::Weight;
use crate::host::Round;

/// Query rows from which a call goes through the blocked path.
pub(crate) const BLOCKED_FROM_ROWS: usize = 8;

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
    pub(crate) fn of(p: &'a FlexTensor, dtype: DType) -> Option<Self> {
        let strides = p.layout().strides();
        let forward = strides[2] == 1 && strides[0] >= 0 && strides[1] >= 0;
        (p.dtype() == dtype && forward).then(|| HeadRows {
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

/// What every (query row, head) task shares.
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
    params: &AttentionParams,
    keys: &HeadRows<E>,
    values: &HeadRows<E>,
    out: &mut [f32],
) {
    let seq = params.q.len() / (params.heads * params.dim);
    if seq >= BLOCKED_FROM_ROWS {
        return attend_blocked(params, keys, values, seq, out);
    }
    let attend = pick_attend::<E>();
    out.par_chunks_mut(params.dim)
        .enumerate()
        .for_each_init(Vec::new, |scores, (task, out)| {
            attend(
                params,
                keys,
                values,
                task / params.heads,
                task % params.heads,
                scores,
                out,
            )
        });
}

type AttendFn<E> =
    fn(&AttentionParams, &HeadRows<E>, &HeadRows<E>, usize, usize, &mut Vec<f32>, &mut [f32]);

fn pick_attend<E: Weight>() -> AttendFn<E> {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return |p, k, v, row, head, scores, out| unsafe {
            attend_avx2(p, k, v, row, head, scores, out)
        };
    }
    attend
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2<E: Weight>(
    p: &AttentionParams,
    keys: &HeadRows<E>,
    values: &HeadRows<E>,
    row: usize,
    head: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend(p, keys, values, row, head, scores, out)
}

/// Query `row` of `head`: scores against keys `0..=start + row`, softmax, weighted values.
#[inline(always)]
fn attend<E: Weight>(
    p: &AttentionParams,
    keys: &HeadRows<E>,
    values: &HeadRows<E>,
    row: usize,
    head: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let dim = out.len();
    let kv = head / p.group;
    let visible = p.start + row + 1;
    let q = &p.q[(row * p.heads + head) * dim..][..dim];
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for j in 0..visible {
        let s = p
            .scores_round
            .apply(p.scores_round.apply(dot(q, keys.row(kv, j, dim))) * p.scale);
        max = max.max(s);
        scores.push(s);
    }
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = exp_nonpositive(*s - max);
    }
    for s in scores.iter() {
        sum += *s;
    }
    out.fill(0.0);
    for (j, &s) in scores.iter().enumerate() {
        let prob = p.matmul_round.apply(s / sum);
        for (o, &v) in out.iter_mut().zip(values.row(kv, j, dim)) {
            *o += prob * v.f32();
        }
    }
    if p.matmul_round != Round::F32 {
        out.iter_mut().for_each(|o| *o = p.matmul_round.apply(*o));
    }
}

/// `Σ a[i] b[i]` with eight partial sums (vectorizes; the same order on every machine).
#[inline(always)]
fn dot<E: Weight>(a: &[f32], b: &[E]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y.f32())
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l].f32();
        }
    }
    crate::gemm::lane_sum(&acc) + tail
}

/// Every head of a `seq`-row call through the blocked products, heads split across the pool.
fn attend_blocked<E: Lanes>(
    p: &AttentionParams,
    keys: &HeadRows<E>,
    values: &HeadRows<E>,
    seq: usize,
    out: &mut [f32],
) {
    let (heads, dim) = (p.heads, p.dim);
    let per_head: Vec<Vec<f32>> = (0..heads)
        .into_par_iter()
        .map(|head| attend_head(p, keys, values, seq, head))
        .collect();
    for (head, rows) in per_head.iter().enumerate() {
        for (row, values) in rows.chunks_exact(dim).enumerate() {
            out[(row * heads + head) * dim..][..dim].copy_from_slice(values);
        }
    }
}

/// One head, all `seq` query rows: `[seq, dim]`.
fn attend_head<E: Lanes>(
    p: &AttentionParams,
    keys: &HeadRows<E>,
    values: &HeadRows<E>,
    seq: usize,
    head: usize,
) -> Vec<f32> {
    let (dim, kv, total) = (p.dim, head / p.group, p.start + seq);
    let q: Vec<f32> = (0..seq)
        .flat_map(|row| p.q[(row * p.heads + head) * dim..][..dim].iter().copied())
        .collect();
    // Scores of every query row against every key (masked ones are computed and ignored).
    let mut probs = match keys.head_slice(kv, total, dim) {
        Some(k) => matmul_rows_serial(&q, seq, dim, k, total),
        None => {
            let k: Vec<f32> = (0..total)
                .flat_map(|j| keys.row(kv, j, dim).iter().map(|v| v.f32()))
                .collect();
            matmul_rows_serial(&q, seq, dim, &k, total)
        }
    };
    for (row, scores) in probs.chunks_exact_mut(total).enumerate() {
        let visible = p.start + row + 1;
        let (seen, masked) = scores.split_at_mut(visible);
        softmax_row(p, seen);
        masked.fill(0.0);
    }
    // Values transposed to `[dim, total]` rows for the second product.
    let mut vt = vec![0.0f32; dim * total];
    for j in 0..total {
        for (d, v) in values.row(kv, j, dim).iter().enumerate() {
            vt[d * total + j] = v.f32();
        }
    }
    let mut out = matmul_rows_serial(&probs, seq, total, &vt, dim);
    if p.matmul_round != Round::F32 {
        out.iter_mut().for_each(|o| *o = p.matmul_round.apply(*o));
    }
    out
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
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        return unsafe { avx2(p, scores) };
    }
    softmax_row_any(p, scores)
}

/// Raw `q·k` of one query row → probabilities in the matmul dtype, as [`attend`] computes them.
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
