//! Fused SwiGLU, RoPE and causal attention on host memory.
//!
//! burn-flex runs the generic graph's small ops one by one and walks strided views (the
//! head-split `swap_dims`, RoPE's half slices) element by element; at a 128-token prefill of
//! the 0.5B model that cost more than the attention projections themselves. These loops read
//! each tensor once, round to the plan's dtypes at the points the graph does, and split the
//! work across the rayon pool.

use std::sync::Arc;

use burn::prelude::Tensor;
use burn::tensor::{DType, FloatDType};
use burn_flex::{Flex, FlexTensor};
use qwen2_core::model::FusedKernels;
use qwen2_core::precision::PrecisionPlan;
use rayon::prelude::*;

use crate::host::{from_f32, primitive, to_f32, Round};

/// The CPU's [`FusedKernels`].
pub struct CpuFused;

/// Kernels for [`qwen2_core::Platform::fused_kernels`].
pub fn kernels() -> Arc<dyn FusedKernels<Flex>> {
    Arc::new(CpuFused)
}

/// burn-flex's sigmoid, so the fused SwiGLU matches the graph's `x * sigmoid(x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Rows of a `[heads, positions, head_dim]` tensor, read in place when it is f32 with
/// contiguous rows (the f32 KV cache), else from an f32 copy.
struct HeadRows {
    tensor: Option<FlexTensor>,
    copy: Vec<f32>,
    offset: usize,
    head_stride: usize,
    row_stride: usize,
}

impl HeadRows {
    fn new(t: &Tensor<Flex, 3>) -> Self {
        let [_, rows, dim] = t.dims();
        let p = primitive(t);
        let strides = p.layout().strides().to_vec();
        if p.dtype() == DType::F32 && strides[2] == 1 && strides[0] >= 0 && strides[1] >= 0 {
            return HeadRows {
                offset: p.layout().start_offset(),
                head_stride: strides[0] as usize,
                row_stride: strides[1] as usize,
                tensor: Some(p),
                copy: Vec::new(),
            };
        }
        HeadRows {
            tensor: None,
            copy: to_f32(t),
            offset: 0,
            head_stride: rows * dim,
            row_stride: dim,
        }
    }

    fn data(&self) -> &[f32] {
        match &self.tensor {
            Some(t) => t.storage::<f32>(),
            None => &self.copy,
        }
    }
}

impl FusedKernels<Flex> for CpuFused {
    fn swiglu_supported(&self, dtype: FloatDType) -> bool {
        Round::of(dtype).is_some()
    }

    fn swiglu(&self, gate: &Tensor<Flex, 2>, up: &Tensor<Flex, 2>) -> Tensor<Flex, 2> {
        let dtype: FloatDType = gate.dtype().into();
        let round = Round::of(dtype).unwrap_or(Round::F32);
        let mut out = to_f32(gate);
        let up = to_f32(up);
        out.par_chunks_mut(1 << 14)
            .zip(up.par_chunks(1 << 14))
            .for_each(|(g, u)| {
                for (g, &u) in g.iter_mut().zip(u) {
                    let silu = round.apply(*g * round.apply(sigmoid(*g)));
                    *g = round.apply(silu * u);
                }
            });
        from_f32(out, gate.dims(), dtype)
    }

    fn attention_supported(&self, plan: &PrecisionPlan) -> bool {
        let known = [plan.attention_scores, plan.matmul, plan.kv_cache]
            .iter()
            .all(|&d| Round::of(d).is_some());
        // Cached keys and values must reach the scores / matmul dtypes exactly.
        let exact = |to: FloatDType| to == plan.kv_cache || to == FloatDType::F32;
        known
            && plan.softmax == FloatDType::F32
            && exact(plan.attention_scores)
            && exact(plan.matmul)
    }

    fn rope(
        &self,
        x: &Tensor<Flex, 2>,
        heads: usize,
        cos: &Tensor<Flex, 2>,
        sin: &Tensor<Flex, 2>,
        start: usize,
    ) -> Tensor<Flex, 2> {
        let [seq, width] = x.dims();
        let dim = width / heads;
        let half = dim / 2;
        let mut out = to_f32(x);
        let (cos, sin) = (table_rows(cos, start, seq), table_rows(sin, start, seq));
        out.par_chunks_mut(width).enumerate().for_each(|(s, row)| {
            let (c, sn) = (&cos[s * half..][..half], &sin[s * half..][..half]);
            for head in row.chunks_exact_mut(dim) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * c[i] - b * sn[i];
                    x2[i] = b * c[i] + a * sn[i];
                }
            }
        });
        from_f32(out, [seq, width], FloatDType::F32)
    }

    fn attention(
        &self,
        q: &Tensor<Flex, 2>,
        keys: &Tensor<Flex, 3>,
        values: &Tensor<Flex, 3>,
        start: usize,
        plan: &PrecisionPlan,
    ) -> Tensor<Flex, 2> {
        let [seq, width] = q.dims();
        let [kv_heads, total, dim] = keys.dims();
        let heads = width / dim;
        let scores_round = Round::of(plan.attention_scores).unwrap_or(Round::F32);
        let matmul_round = Round::of(plan.matmul).unwrap_or(Round::F32);
        let mut q = to_f32(q);
        if scores_round != Round::F32 {
            q.iter_mut().for_each(|v| *v = scores_round.apply(*v));
        }
        let (k, v) = (HeadRows::new(keys), HeadRows::new(values));
        let job = AttentionJob {
            q: &q,
            keys: &k,
            values: &v,
            heads,
            group: heads / kv_heads,
            start,
            scale: scores_round.apply((1.0 / (dim as f64).sqrt()) as f32),
            scores_round,
            matmul_round,
        };
        debug_assert_eq!(start + seq, total);
        let mut out = vec![0.0f32; seq * width];
        let attend = pick_attend();
        out.par_chunks_mut(dim)
            .enumerate()
            .for_each_init(Vec::new, |scores, (task, out)| {
                attend(&job, task / heads, task % heads, scores, out)
            });
        from_f32(out, [seq, width], plan.matmul)
    }
}

/// Rows `start..start + seq` of a `[max_positions, half]` f32 table, as one slice.
fn table_rows(table: &Tensor<Flex, 2>, start: usize, seq: usize) -> Vec<f32> {
    let [_, half] = table.dims();
    to_f32(&table.clone().slice([start..start + seq, 0..half]))
}

/// Everything one (query row, head) task reads.
struct AttentionJob<'a> {
    /// Rotated queries, `[seq, heads * head_dim]`, rounded to the scores dtype.
    q: &'a [f32],
    keys: &'a HeadRows,
    values: &'a HeadRows,
    heads: usize,
    group: usize,
    start: usize,
    scale: f32,
    scores_round: Round,
    matmul_round: Round,
}

type AttendFn = fn(&AttentionJob, usize, usize, &mut Vec<f32>, &mut [f32]);

fn pick_attend() -> AttendFn {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        return |job, row, head, scores, out| unsafe { attend_avx2(job, row, head, scores, out) };
    }
    attend
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    job: &AttentionJob,
    row: usize,
    head: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    attend(job, row, head, scores, out)
}

/// Query `row` of `head`: scores against keys `0..=start + row`, softmax, weighted values.
#[inline(always)]
fn attend(job: &AttentionJob, row: usize, head: usize, scores: &mut Vec<f32>, out: &mut [f32]) {
    let dim = out.len();
    let kv = head / job.group;
    let visible = job.start + row + 1;
    let q = &job.q[(row * job.heads + head) * dim..][..dim];
    let (kd, vd) = (job.keys.data(), job.values.data());
    let key = |j: usize| {
        let at = job.keys.offset + kv * job.keys.head_stride + j * job.keys.row_stride;
        &kd[at..at + dim]
    };
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for j in 0..visible {
        let s = job
            .scores_round
            .apply(job.scores_round.apply(dot(q, key(j))) * job.scale);
        max = max.max(s);
        scores.push(s);
    }
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    for (j, &s) in scores.iter().enumerate() {
        let p = job.matmul_round.apply(s / sum);
        let at = job.values.offset + kv * job.values.head_stride + j * job.values.row_stride;
        for (o, &v) in out.iter_mut().zip(&vd[at..at + dim]) {
            *o += p * v;
        }
    }
    if job.matmul_round != Round::F32 {
        out.iter_mut().for_each(|o| *o = job.matmul_round.apply(*o));
    }
}

/// `Σ a[i] b[i]` with eight partial sums (vectorizes; the same order on every machine).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}
