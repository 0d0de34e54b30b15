//! The products in tasks of `TASK_ROWS` weight rows: each task sums its outputs for every
//! activation row into a per-thread f32 block (all passes along `k`), then its epilogue rounds
//! them to the output dtype, adds the bias or applies SwiGLU, and stores its columns of the
//! output. Quantized weight rows are dequantized to bf16 per task first.

use half::bf16;
use rayon::prelude::*;

use super::packed::{self, Packed, WR};
use super::tiles::{block_with_stride, rows_from_bf16, rows_from_f32, Rows};
use super::{Epilogue, Input, Matrix, Output, MR, TASK_ROWS};
use crate::host::Round;

/// Per-thread buffers reused across calls (a fresh allocation of a few hundred KB per task is
/// a fresh mapping whose pages the kernel zeroes: measured 15% of a prefill).
#[derive(Default)]
struct Scratch {
    /// The task's sums, `[m, TASK_ROWS]` per matrix.
    sums: Vec<f32>,
    /// Dequantized weight rows as bf16 bits (`[TASK_ROWS, stride]`).
    weights: Vec<u16>,
    /// Dequantized f32 weight rows, for types without a direct bf16 path.
    values: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// The output buffer, shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct SharedPtr<T>(*mut T);
// SAFETY: every task writes only its own columns of the buffer, which outlives the tasks.
unsafe impl<T> Send for SharedPtr<T> {}
unsafe impl<T> Sync for SharedPtr<T> {}

/// An output element type.
trait Element: Copy + Send + Sync {
    /// The element holding `v` (already rounded to this type's precision).
    fn from_rounded(v: f32) -> Self;
    /// Rounding to this type.
    const ROUND: Round;
}

impl Element for f32 {
    #[inline(always)]
    fn from_rounded(v: f32) -> Self {
        v
    }
    const ROUND: Round = Round::F32;
}

impl Element for bf16 {
    #[inline(always)]
    fn from_rounded(v: f32) -> Self {
        bf16::from_bits((v.to_bits() >> 16) as u16)
    }
    const ROUND: Round = Round::Bf16;
}

/// The activations as the task loops read them.
enum Acts<'a> {
    /// Padded bf16 rows for the dot-product tiles; sums `[m][TASK_ROWS]`.
    Rows(Rows<'a>),
    /// Pairs along `k` for the outer-product blocks; sums `[PACKED_TASK_ROWS][rows]`.
    Packed(Packed),
}

/// Weight rows per task of the outer-product blocks (eight blocks of `WR`).
const PACKED_TASK_ROWS: usize = 8 * WR;

impl Acts<'_> {
    /// Weight rows per task for `n` rows: for the outer-product blocks, up to eight blocks of
    /// `WR`, fewer where that leaves fewer than 16 tasks per thread (the last, partial task
    /// then unbalances the threads less; the activations are streamed once per block of `WR`
    /// rows whatever the task size).
    fn task_rows(&self, n: usize) -> usize {
        match self {
            Acts::Rows(_) => TASK_ROWS,
            Acts::Packed(_) => {
                let blocks = n.div_ceil(WR) / (rayon::current_num_threads().max(1) * 16);
                WR * blocks.clamp(1, PACKED_TASK_ROWS / WR)
            }
        }
    }

    /// The strides of a task's sums: (per activation row, per weight row), and their count.
    fn layout(&self, m: usize) -> (usize, usize, usize) {
        match self {
            Acts::Rows(_) => (TASK_ROWS, 1, m * TASK_ROWS),
            Acts::Packed(p) => (1, p.rows, PACKED_TASK_ROWS * p.rows),
        }
    }
}

/// The product (see `super::product`): the outer-product blocks for the pool's many-row
/// products (`k` even), the dot-product tiles otherwise.
///
/// # Safety
/// The CPU has AVX512-BF16, AVX512F, AVX512BW and AVX512VL; the operands were checked by the
/// caller (`x` holds `[m, k]`, every matrix `[n, k]`, a bias `n` values, SwiGLU two matrices,
/// `k > 0`).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn product(
    x: Input<'_>,
    m: usize,
    k: usize,
    matrices: &[Matrix<'_>],
    n: usize,
    epilogue: Epilogue<'_>,
    out: Round,
    pooled: bool,
) -> Output {
    let acts = if pooled && k.is_multiple_of(2) && m >= PACKED_MIN_ROWS {
        // SAFETY: the caller checked the CPU and the length.
        Acts::Packed(unsafe { packed::pack(x, m, k) })
    } else {
        Acts::Rows(match x {
            // SAFETY: the caller checked the CPU and the length.
            Input::F32(x) => unsafe { rows_from_f32(x, m, k, Vec::new()) },
            Input::Bf16(x) => rows_from_bf16(x, m, k, Vec::new()),
        })
    };
    let args = (&acts, m, k, matrices, n, epilogue, pooled);
    // SAFETY: as this function's.
    unsafe {
        match out {
            Round::Bf16 => Output::Bf16(product_typed::<bf16>(args)),
            _ => Output::F32(product_typed::<f32>(args)),
        }
    }
}

/// Activation rows from which the pool's products take the outer-product blocks (below, the
/// 16-row groups would be mostly padding).
const PACKED_MIN_ROWS: usize = 8;

/// [`product`]'s tasks into a new `[m, n]` buffer of `T`.
///
/// # Safety
/// As [`product`].
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
unsafe fn product_typed<T: Element>(
    (acts, m, k, matrices, n, epilogue, pooled): (
        &Acts<'_>,
        usize,
        usize,
        &[Matrix<'_>],
        usize,
        Epilogue<'_>,
        bool,
    ),
) -> Vec<T> {
    let mut y: Vec<T> = Vec::with_capacity(m * n);
    let ptr = SharedPtr(y.as_mut_ptr());
    let per_task = acts.task_rows(n);
    let task = |t: usize| {
        let rows = t * per_task..((t + 1) * per_task).min(n);
        SCRATCH.with_borrow_mut(|s| {
            // SAFETY: the caller checked the CPU; the task writes columns `rows` of the
            // `[m, n]` output only.
            unsafe { run_task(acts, m, k, matrices, n, rows, epilogue, s, ptr) }
        })
    };
    let tasks = n.div_ceil(per_task);
    if pooled {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
    // SAFETY: the tasks cover every column, and each stored its columns of every row.
    unsafe { y.set_len(m * n) };
    y
}

/// The sums of `len` weight rows (`w`, `ldw` apart) into a task's `sums`.
///
/// # Safety
/// As [`product`]; `w` holds `len` rows of `ldw ≥ k`; `sums` holds the layout's count.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
unsafe fn task_sums(
    acts: &Acts<'_>,
    m: usize,
    k: usize,
    w: &[bf16],
    ldw: usize,
    len: usize,
    sums: &mut [f32],
) {
    match acts {
        // SAFETY: as this function's.
        Acts::Rows(xb) => unsafe {
            block_with_stride(xb, m, k, w, ldw, TASK_ROWS, 0..len, sums.as_mut_ptr())
        },
        // SAFETY: as this function's.
        Acts::Packed(xp) => unsafe { packed::sums(xp, k, w, ldw, len, sums) },
    }
}

/// One task: the sums of weight rows `rows` of every matrix, then the epilogue into `y`.
///
/// # Safety
/// As [`product`]; `y` holds `[m, n]` elements of which this task alone writes columns `rows`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
unsafe fn run_task<T: Element>(
    acts: &Acts<'_>,
    m: usize,
    k: usize,
    matrices: &[Matrix<'_>],
    n: usize,
    rows: std::ops::Range<usize>,
    epilogue: Epilogue<'_>,
    s: &mut Scratch,
    y: SharedPtr<T>,
) {
    let len = rows.len();
    let (si, sj, block) = acts.layout(m);
    if s.sums.len() < block * matrices.len() {
        s.sums.resize(block * matrices.len(), 0.0);
    }
    for (index, matrix) in matrices.iter().enumerate() {
        let sums = &mut s.sums[index * block..][..block];
        match matrix {
            Matrix::Bf16(w) => {
                let w = &w[rows.start * k..];
                // SAFETY: `w` holds `len` rows of `k`.
                unsafe { task_sums(acts, m, k, w, k, len, sums) }
            }
            Matrix::Quantized(q) => {
                let stride = k.next_multiple_of(32);
                let bytes = &q.data()[rows.start * q.row_bytes()..rows.end * q.row_bytes()];
                let mut bits = std::mem::take(&mut s.weights);
                bits.clear();
                bits.resize(len.next_multiple_of(MR) * stride, 0);
                // SAFETY: the caller checked the CPU; `bits` has room for the rows.
                let direct = unsafe {
                    super::dequant::rows_to_bf16(q.ggml_type(), bytes, len, k, &mut bits, stride)
                };
                let wb = if direct {
                    Rows {
                        bits: std::borrow::Cow::Owned(bits),
                        stride,
                    }
                } else {
                    s.values.resize(len * k, 0.0);
                    qwen2_gguf::dequantize_into(q.ggml_type(), bytes, &mut s.values)
                        .expect("a QuantMatrix holds whole rows of its type");
                    // SAFETY: the caller checked the CPU.
                    unsafe { rows_from_f32(&s.values, len, k, bits) }
                };
                let w: &[bf16] = bytemuck::cast_slice(&wb.bits);
                // SAFETY: as above, the rows `wb.stride` apart.
                unsafe { task_sums(acts, m, k, w, wb.stride, len, sums) }
                s.weights = wb.bits.into_owned();
            }
        }
    }
    let y = y.0;
    let round = T::ROUND;
    let (first, second) = s.sums.split_at_mut(block);
    if let Epilogue::Swiglu = epilogue {
        // Two plain loops (a chained iterator does not vectorize).
        for v in first.iter_mut() {
            *v = round.apply(*v);
        }
        for v in &mut second[..block] {
            *v = round.apply(*v);
        }
        crate::fused::swiglu_slice(first, &second[..block], round);
    }
    let bias = match epilogue {
        Epilogue::Store(bias) => bias.map(|b| &b[rows.clone()]),
        Epilogue::Swiglu => None,
    };
    let swiglu = matches!(epilogue, Epilogue::Swiglu);
    let mut line = [0.0f32; PACKED_TASK_ROWS];
    for i in 0..m {
        // SAFETY: row `i`'s columns `rows` of `y`, which only this task writes.
        let dst = unsafe { std::slice::from_raw_parts_mut(y.add(i * n + rows.start), len) };
        let sums: &[f32] = if sj == 1 {
            &first[i * si..][..len]
        } else {
            for (jj, v) in line[..len].iter_mut().enumerate() {
                *v = first[i * si + jj * sj];
            }
            &line[..len]
        };
        if swiglu {
            // Already rounded and combined.
            for (d, &v) in dst.iter_mut().zip(sums) {
                *d = T::from_rounded(v);
            }
        } else {
            store_row(sums, bias, dst);
        }
    }
}

/// One output row of a task: `sums` rounded to `T`, plus `bias` and rounded again.
#[inline(always)]
fn store_row<T: Element>(sums: &[f32], bias: Option<&[f32]>, dst: &mut [T]) {
    let round = |v: f32| T::ROUND.apply(v);
    match bias {
        None => {
            for (d, &v) in dst.iter_mut().zip(sums) {
                *d = T::from_rounded(round(v));
            }
        }
        Some(b) => {
            for ((d, &v), &b) in dst.iter_mut().zip(sums).zip(b) {
                *d = T::from_rounded(round(round(v) + b));
            }
        }
    }
}

/// The tests' and benchmark's way in: the plain f32 product on the calling thread or the pool.
#[cfg(test)]
pub(super) fn run(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize, pooled: bool) -> Vec<f32> {
    assert!(super::enabled_for_tests());
    // SAFETY: checked just above.
    let y = unsafe {
        product(
            Input::F32(x),
            m,
            k,
            &[Matrix::Bf16(w)],
            n,
            Epilogue::Store(None),
            Round::F32,
            pooled,
        )
    };
    match y {
        Output::F32(y) => y,
        Output::Bf16(_) => unreachable!("f32 was asked for"),
    }
}

/// The dot-product tiles on the pool (what the pool's products ran before the outer-product
/// blocks), for the benchmark's comparison.
#[cfg(test)]
pub(super) fn run_tiles(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize) -> Vec<f32> {
    assert!(super::enabled_for_tests());
    // SAFETY: checked just above.
    unsafe {
        let acts = Acts::Rows(rows_from_f32(x, m, k, Vec::new()));
        let matrices = [Matrix::Bf16(w)];
        product_typed::<f32>((&acts, m, k, &matrices, n, Epilogue::Store(None), true))
    }
}
