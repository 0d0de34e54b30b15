//! RoPE and causal grouped-query self-attention of a training batch as one autodiff op.
//!
//! The generic graph builds this from ~25 nodes (head splits, the RoPE halves, casts, the
//! scores, mask, softmax, the weighted sum and their backward passes), each a strided copy or
//! a fresh tensor. Here the forward runs per (row, head) over f32 buffers with the products on
//! the `gemm` crate, keeping the rotated queries and keys, the values and the softmax output;
//! the backward runs per (row, kv head), summing the gradients of the query heads that share
//! it. Values are rounded where the graph rounds them (rotated q/k to the score dtype, scores
//! and their scaling, probabilities and the output to the matmul dtype); the backward computes
//! in f32 and rounds each input's gradient to that input's dtype.

use std::borrow::Cow;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::prelude::Tensor;
use burn::tensor::{FloatDType, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use qwen2_core::model::Batch;
use qwen2_core::precision::PrecisionPlan;
use rayon::prelude::*;

use super::inner;
use super::strided::{matmul, View};
use crate::host::{from_f32, to_f32, Round};

type Ad = Autodiff<Flex>;

/// The shape of one call.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Dims {
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    fn rep(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// What the backward pass reads.
struct Saved {
    dims: Dims,
    /// Keys each query position of each row sees: `visible[r * seq + t]`.
    visible: Vec<usize>,
    /// Rotated queries `[batch * seq, heads * head_dim]`, as the scores read them.
    q: Vec<f32>,
    /// Rotated keys `[batch * seq, kv_heads * head_dim]`, as the scores read them.
    k: Vec<f32>,
    /// Values `[batch * seq, kv_heads * head_dim]`, as the weighted sum reads them.
    v: Vec<f32>,
    /// Softmax output per (row, head), `[seq, seq]` each, before rounding.
    probs: Vec<Vec<f32>>,
    /// RoPE tables for positions `start..start + seq`, `[seq, head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    scale: f32,
    /// The matmul dtype's rounding (probabilities in the weighted sum).
    round_p: Round,
    /// The dtypes of q, k and v: their gradients' dtypes.
    dtypes: [FloatDType; 3],
}

impl Saved {
    /// Probabilities as the weighted sum reads them (rounded to the matmul dtype; the same
    /// slice, uncopied, in f32).
    fn rounded<'a>(&self, p: &'a [f32]) -> Cow<'a, [f32]> {
        match self.round_p {
            Round::F32 => Cow::Borrowed(p),
            r => Cow::Owned(p.iter().map(|&x| r.apply(x)).collect()),
        }
    }
}

impl std::fmt::Debug for Saved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saved").field("dims", &self.dims).finish()
    }
}

/// Rotates every head of `x` (`[batch * seq, heads * head_dim]`) in place: `inverse` applies
/// the transposed rotation (the backward of RoPE).
fn rope(x: &mut [f32], d: &Dims, width: usize, cos: &[f32], sin: &[f32], inverse: bool) {
    let half = d.head_dim / 2;
    x.par_chunks_mut(width).enumerate().for_each(|(row, x)| {
        let t = row % d.seq;
        let (c, s) = (&cos[t * half..][..half], &sin[t * half..][..half]);
        for head in x.chunks_mut(d.head_dim) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                if inverse {
                    x1[i] = a * c[i] + b * s[i];
                    x2[i] = b * c[i] - a * s[i];
                } else {
                    x1[i] = a * c[i] - b * s[i];
                    x2[i] = b * c[i] + a * s[i];
                }
            }
        }
    });
}

fn round_all(x: &mut [f32], round: Round) {
    if round != Round::F32 {
        x.par_chunks_mut(1 << 15)
            .for_each(|c| c.iter_mut().for_each(|v| *v = round.apply(*v)));
    }
}

/// The forward of one (row, head): its output `[seq, head_dim]` (f32 sums) and the softmax.
fn head_forward(s: &Saved, r: usize, h: usize, round_scores: Round) -> (Vec<f32>, Vec<f32>) {
    let d = &s.dims;
    let (seq, hd, g) = (d.seq, d.head_dim, h / d.rep());
    let qv = View::rows(r * seq * d.q_width() + h * hd, seq, hd, d.q_width());
    let kv = View::rows(r * seq * d.kv_width() + g * hd, seq, hd, d.kv_width());
    let mut p = vec![0f32; seq * seq];
    matmul(
        &mut p,
        View::rows(0, seq, seq, seq),
        false,
        &s.q,
        qv,
        &s.k,
        kv.t(),
    );
    for t in 0..seq {
        let row = &mut p[t * seq..][..seq];
        let visible = s.visible[r * seq + t];
        let mut max = f32::NEG_INFINITY;
        for x in row[..visible].iter_mut() {
            *x = round_scores.apply(round_scores.apply(*x) * s.scale);
            max = max.max(*x);
        }
        let mut sum = 0f32;
        for x in row[..visible].iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        row[..visible].iter_mut().for_each(|x| *x /= sum);
        row[visible..].fill(0.0);
    }
    let rounded = s.rounded(&p);
    let mut out = vec![0f32; seq * hd];
    let pv = View::rows(0, seq, seq, seq);
    matmul(
        &mut out,
        View::rows(0, seq, hd, hd),
        false,
        &rounded,
        pv,
        &s.v,
        kv,
    );
    (out, p)
}

/// The backward of one (row, kv head): `dq` of its query heads (`[rep][seq, head_dim]`) and
/// `dk`, `dv` (`[seq, head_dim]`), in f32, before the inverse rotation.
fn group_backward(
    s: &Saved,
    dout: &[f32],
    r: usize,
    g: usize,
) -> (Vec<Vec<f32>>, Vec<f32>, Vec<f32>) {
    let d = &s.dims;
    let (seq, hd) = (d.seq, d.head_dim);
    let kv = View::rows(r * seq * d.kv_width() + g * hd, seq, hd, d.kv_width());
    let square = View::rows(0, seq, seq, seq);
    let (mut dk, mut dv) = (vec![0f32; seq * hd], vec![0f32; seq * hd]);
    let local = View::rows(0, seq, hd, hd);
    let mut dqs = Vec::with_capacity(d.rep());
    for (i, h) in (g * d.rep()..(g + 1) * d.rep()).enumerate() {
        let p = &s.probs[r * d.heads + h];
        let ov = View::rows(r * seq * d.q_width() + h * hd, seq, hd, d.q_width());
        // dV += round(P)ᵀ · dO
        let rounded = s.rounded(p);
        matmul(&mut dv, local, i > 0, &rounded, square.t(), dout, ov);
        // dP = dO · Vᵀ, then the softmax and scaling backward: dS = P ⊙ (dP − Σ P dP) · scale.
        let mut ds = vec![0f32; seq * seq];
        matmul(&mut ds, square, false, dout, ov, &s.v, kv.t());
        for t in 0..seq {
            let (pr, dr) = (&p[t * seq..][..seq], &mut ds[t * seq..][..seq]);
            let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
            for (dx, &px) in dr.iter_mut().zip(pr) {
                *dx = px * (*dx - dot) * s.scale;
            }
        }
        // dQ = dS · K, dK += dSᵀ · Q
        let mut dq = vec![0f32; seq * hd];
        matmul(&mut dq, local, false, &ds, square, &s.k, kv);
        let qv = View::rows(r * seq * d.q_width() + h * hd, seq, hd, d.q_width());
        matmul(&mut dk, local, i > 0, &ds, square.t(), &s.q, qv);
        dqs.push(dq);
    }
    (dqs, dk, dv)
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = Arc<Saved>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let dout = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let d = s.dims;
        let dout = to_f32(&Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(
            dout,
        )));
        let tasks: Vec<(usize, usize)> = (0..d.batch)
            .flat_map(|r| (0..d.kv_heads).map(move |g| (r, g)))
            .collect();
        let parts: Vec<_> = tasks
            .par_iter()
            .map(|&(r, g)| group_backward(&s, &dout, r, g))
            .collect();
        let (seq, hd) = (d.seq, d.head_dim);
        let rows = d.batch * seq;
        let mut dq = vec![0f32; rows * d.q_width()];
        let mut dk = vec![0f32; rows * d.kv_width()];
        let mut dv = vec![0f32; rows * d.kv_width()];
        for (&(r, g), (dqs, dkp, dvp)) in tasks.iter().zip(parts) {
            for (i, q) in dqs.iter().enumerate() {
                let h = g * d.rep() + i;
                for t in 0..seq {
                    dq[(r * seq + t) * d.q_width() + h * hd..][..hd]
                        .copy_from_slice(&q[t * hd..][..hd]);
                }
            }
            for t in 0..seq {
                let at = (r * seq + t) * d.kv_width() + g * hd;
                dk[at..][..hd].copy_from_slice(&dkp[t * hd..][..hd]);
                dv[at..][..hd].copy_from_slice(&dvp[t * hd..][..hd]);
            }
        }
        rope(&mut dq, &d, d.q_width(), &s.cos, &s.sin, true);
        rope(&mut dk, &d, d.kv_width(), &s.cos, &s.sin, true);
        let prim = |v: Vec<f32>, w: usize, dtype: FloatDType| -> FlexTensor {
            from_f32(v, [rows, w], dtype).into_primitive().tensor()
        };
        let [tq, tk, tv] = s.dtypes;
        if let Some(node) = node_q {
            grads.register::<Flex>(node.id, prim(dq, d.q_width(), tq));
        }
        if let Some(node) = node_k {
            grads.register::<Flex>(node.id, prim(dk, d.kv_width(), tk));
        }
        if let Some(node) = node_v {
            grads.register::<Flex>(node.id, prim(dv, d.kv_width(), tv));
        }
    }
}

/// Whether the op computes what `plan` asks (softmax in f32, roundings it knows).
pub fn supported(plan: &PrecisionPlan) -> bool {
    plan.softmax == FloatDType::F32
        && Round::of(plan.attention_scores).is_some()
        && Round::of(plan.matmul).is_some()
}

/// See `qwen2_core::model::FusedKernels::attention_rows`.
#[allow(clippy::too_many_arguments)]
pub fn attention_rows(
    q: &Tensor<Ad, 2>,
    k: &Tensor<Ad, 2>,
    v: &Tensor<Ad, 2>,
    rows: &Batch,
    heads: usize,
    start: usize,
    cos: &Tensor<Ad, 2>,
    sin: &Tensor<Ad, 2>,
    plan: &PrecisionPlan,
) -> Option<Tensor<Ad, 2>> {
    let (batch, seq) = (rows.batch(), rows.seq());
    let [n, q_width] = q.dims();
    let kv_width = k.dims()[1];
    let [max_positions, half] = cos.dims();
    let head_dim = q_width / heads.max(1);
    let kv_heads = kv_width / head_dim.max(1);
    let shapes_ok = n == batch * seq
        && heads > 0
        && head_dim == 2 * half
        && q_width == heads * head_dim
        && kv_heads > 0
        && kv_width == kv_heads * head_dim
        && heads.is_multiple_of(kv_heads)
        && v.dims() == [n, kv_width]
        && start + seq <= max_positions;
    if !supported(plan) || !shapes_ok {
        return None;
    }
    let dims = Dims {
        batch,
        seq,
        heads,
        kv_heads,
        head_dim,
    };
    let round_scores = Round::of(plan.attention_scores)?;
    let table = |t: &Tensor<Ad, 2>| {
        let all = to_f32(&inner(t));
        all[start * half..(start + seq) * half].to_vec()
    };
    let (cos, sin) = (table(cos), table(sin));
    let mut qr = to_f32(&inner(q));
    let mut kr = to_f32(&inner(k));
    let mut vv = to_f32(&inner(v));
    rope(&mut qr, &dims, q_width, &cos, &sin, false);
    rope(&mut kr, &dims, kv_width, &cos, &sin, false);
    round_all(&mut qr, round_scores);
    round_all(&mut kr, round_scores);
    round_all(&mut vv, Round::of(plan.matmul)?);
    // Query t of row r sees keys j ≤ start + t that are real tokens (padded queries still see
    // the row's real keys), as the generic mask.
    let visible: Vec<usize> = rows
        .lengths()
        .iter()
        .flat_map(|&len| (0..seq).map(move |t| (start + t + 1).min(start + len).min(seq)))
        .collect();
    let dtypes = [q.dtype(), k.dtype(), v.dtype()].map(|d| d.into());
    let mut saved = Saved {
        dims,
        visible,
        q: qr,
        k: kr,
        v: vv,
        probs: Vec::new(),
        cos,
        sin,
        scale: (1.0 / (head_dim as f64).sqrt()) as f32,
        round_p: Round::of(plan.matmul)?,
        dtypes,
    };
    let tasks: Vec<(usize, usize)> = (0..batch)
        .flat_map(|r| (0..heads).map(move |h| (r, h)))
        .collect();
    let parts: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(r, h)| head_forward(&saved, r, h, round_scores))
        .collect();
    let mut out = vec![0f32; n * q_width];
    let mut probs = Vec::with_capacity(parts.len());
    for (&(r, h), (o, p)) in tasks.iter().zip(parts) {
        for t in 0..seq {
            out[(r * seq + t) * q_width + h * head_dim..][..head_dim]
                .copy_from_slice(&o[t * head_dim..][..head_dim]);
        }
        probs.push(p);
    }
    saved.probs = probs;
    let y = from_f32(out, [n, q_width], plan.matmul)
        .into_primitive()
        .tensor();
    let nodes = [q, k, v].map(|t| t.clone().into_primitive().tensor().node);
    let out = match AttentionBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(Arc::new(saved), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
}
