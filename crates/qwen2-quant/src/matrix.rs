//! [`QuantMatrix`]: a quantized `[rows, cols]` weight matrix (GGUF `[ne0 = cols, ne1 = rows]`)
//! multiplied by f32 activations without dequantizing it.

use std::ops::Range;
use std::sync::Arc;

use qwen2_gguf::GgmlType;
use rayon::prelude::*;

use crate::huge::WeightArena;

use crate::activation::{ActivationBlocks, ActivationFormat, QuantizedActivations};
use crate::dispatch::{best_path, KernelPath};
use crate::error::{shape_error, QuantError, Result};
use crate::kernels::{select, RowKernel, RowsFn};
use crate::parallel::share;
use crate::quads::quads_per_row;

/// Bytes shared by a matrix: any owner (a `Vec<u8>`, an `Arc<[u8]>`, a memory map) and the
/// byte range of the matrix inside it.
#[derive(Clone)]
pub struct WeightBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl WeightBytes {
    /// `range` of `owner`'s bytes; errors when the range is outside them.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, range: Range<usize>) -> Result<Self> {
        let len = (*owner).as_ref().len();
        if range.start > range.end || range.end > len {
            return Err(shape_error(format!(
                "byte range {range:?} is outside a buffer of {len} bytes"
            )));
        }
        Ok(WeightBytes { owner, range })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }
}

impl From<Vec<u8>> for WeightBytes {
    fn from(bytes: Vec<u8>) -> Self {
        let range = 0..bytes.len();
        WeightBytes {
            owner: Arc::new(bytes),
            range,
        }
    }
}

impl From<Arc<[u8]>> for WeightBytes {
    fn from(bytes: Arc<[u8]>) -> Self {
        let range = 0..bytes.len();
        WeightBytes {
            owner: Arc::new(bytes),
            range,
        }
    }
}

impl std::fmt::Debug for WeightBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightBytes({} bytes)", self.range.len())
    }
}

/// A quantized weight matrix: `rows` output features × `cols` input features, row-major
/// blocks of `ggml_type` as GGUF stores a tensor with `dims = [cols, rows]`.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    ggml_type: GgmlType,
    rows: usize,
    cols: usize,
    data: WeightBytes,
}

impl QuantMatrix {
    /// A matrix over `data`, which must hold exactly `rows × cols / block_size` blocks; `cols`
    /// must be a multiple of the block size and the type one with a kernel
    /// ([`SUPPORTED_WEIGHT_TYPES`](crate::SUPPORTED_WEIGHT_TYPES)).
    pub fn new(
        ggml_type: GgmlType,
        rows: usize,
        cols: usize,
        data: impl Into<WeightBytes>,
    ) -> Result<Self> {
        let data = data.into();
        ActivationFormat::for_weight_type(ggml_type)
            .ok_or(QuantError::UnsupportedType(ggml_type))?;
        let block = ggml_type.block_size();
        if cols == 0 || !cols.is_multiple_of(block) {
            return Err(shape_error(format!(
                "{cols} columns are not a positive multiple of the {ggml_type} block size {block}"
            )));
        }
        let expected = (cols / block)
            .checked_mul(ggml_type.type_size())
            .and_then(|row_bytes| row_bytes.checked_mul(rows));
        if expected != Some(data.as_slice().len()) {
            return Err(shape_error(format!(
                "{} bytes are not a {rows} × {cols} {ggml_type} matrix ({expected:?} bytes)",
                data.as_slice().len()
            )));
        }
        Ok(QuantMatrix {
            ggml_type,
            rows,
            cols,
            data,
        })
    }

    /// Quantizes `values` (`rows × cols`, row-major) with qwen2-gguf's reference quantizers
    /// (types it can quantize: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K).
    pub fn from_f32(ggml_type: GgmlType, rows: usize, cols: usize, values: &[f32]) -> Result<Self> {
        if rows.checked_mul(cols) != Some(values.len()) {
            return Err(shape_error(format!(
                "{} values are not {rows} × {cols}",
                values.len()
            )));
        }
        let block = ggml_type.block_size();
        if cols == 0 || !cols.is_multiple_of(block) {
            return Err(shape_error(format!(
                "{cols} columns are not a positive multiple of the {ggml_type} block size {block}"
            )));
        }
        QuantMatrix::from_row_blocks(ggml_type, rows, cols, |r, out| {
            out.clear();
            out.extend_from_slice(&values[r.start * cols..r.end * cols]);
        })
    }

    /// [`QuantMatrix::from_f32`] with the values read a block of rows at a time:
    /// `read(rows, out)` puts rows `rows` (row-major f32) in `out`. Only a few blocks of rows
    /// are held in f32 at once (one per thread), and the bytes are those of `from_f32`.
    pub fn from_row_blocks(
        ggml_type: GgmlType,
        rows: usize,
        cols: usize,
        read: impl Fn(std::ops::Range<usize>, &mut Vec<f32>) + Sync,
    ) -> Result<Self> {
        Self::from_row_blocks_in(None, ggml_type, rows, cols, read)
    }

    /// [`QuantMatrix::from_row_blocks`] writing the blocks into a slot of `arena` (or, without
    /// one, a region of their own).
    pub fn from_row_blocks_in(
        arena: Option<&WeightArena>,
        ggml_type: GgmlType,
        rows: usize,
        cols: usize,
        read: impl Fn(std::ops::Range<usize>, &mut Vec<f32>) + Sync,
    ) -> Result<Self> {
        let block = ggml_type.block_size();
        if cols == 0 || !cols.is_multiple_of(block) {
            return Err(shape_error(format!(
                "{cols} columns are not a positive multiple of the {ggml_type} block size {block}"
            )));
        }
        // Blocks never straddle rows, so rows quantize independently: in parallel chunks of
        // rows, concatenated in order (the same bytes as one call over the whole matrix).
        let row_bytes = cols / block * ggml_type.type_size();
        let rows_per_task = (1 << 16) / cols + 1;
        let fill = |bytes: &mut [u8]| -> Result<()> {
            bytes
                .par_chunks_mut(rows_per_task * row_bytes)
                .enumerate()
                .try_for_each_init(Vec::new, |values, (t, out)| {
                    let first = t * rows_per_task;
                    read(first..first + out.len() / row_bytes, values);
                    if values.len() != out.len() / row_bytes * cols {
                        return Err(shape_error(format!(
                            "rows {first}.. read as {} values, not {} × {cols}",
                            values.len(),
                            out.len() / row_bytes
                        )));
                    }
                    Ok(qwen2_gguf::quantize_into(ggml_type, values, out)?)
                })
        };
        let len = rows * row_bytes;
        // In huge pages where the system has them (see `crate::huge`): the caller's arena if
        // it has room, else a region of the matrix's own (which only gets whole 2 MiB pages,
        // so a small matrix needs the caller's arena).
        let own;
        let arena = match arena.filter(|a| a.remaining() >= len) {
            Some(arena) => Some(arena),
            None => {
                own = crate::huge_pages_wanted()
                    .then(|| WeightArena::for_sizes([len]).ok())
                    .flatten();
                own.as_ref()
            }
        };
        let bytes = match arena {
            Some(arena) => arena.store(len, fill)?,
            None => {
                let mut bytes = vec![0u8; len];
                fill(&mut bytes)?;
                WeightBytes::from(bytes)
            }
        };
        QuantMatrix::new(ggml_type, rows, cols, bytes)
    }

    /// The weight type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// All weight bytes.
    pub fn data(&self) -> &[u8] {
        self.data.as_slice()
    }

    /// Bytes per weight row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ggml_type.block_size() * self.ggml_type.type_size()
    }

    /// Quantizes `m` activation rows (`[m, cols]`) for this matrix's type; reuse the result
    /// for every matrix of the same type and width (e.g. q, k, v projections).
    pub fn quantize_activations(&self, x: &[f32], m: usize) -> Result<QuantizedActivations> {
        QuantizedActivations::quantize(self.ggml_type, x, m, self.cols)
    }

    /// Decode: `y = W x` for one activation row, on [`best_path`].
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.matvec_with_path(best_path(), x, y)
    }

    /// [`matvec`](Self::matvec) on a given kernel path.
    pub fn matvec_with_path(&self, path: KernelPath, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.matmul_with_path(path, x, 1, y)
    }

    /// Prefill: `y[i] = W x[i]` for `m` activation rows (`x: [m, cols]`, `y: [m, rows]`), on
    /// [`best_path`]. Each activation row gives bit-for-bit the result of [`matvec`](Self::matvec).
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        self.matmul_with_path(best_path(), x, m, y)
    }

    /// [`matmul`](Self::matmul) on a given kernel path.
    pub fn matmul_with_path(
        &self,
        path: KernelPath,
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> Result<()> {
        let activations = self.quantize_activations(x, m)?;
        self.matmul_quantized(path, &activations, y)
    }

    /// `y = W xᵀ` for activations quantized once by
    /// [`quantize_activations`](Self::quantize_activations); `y: [activations.rows(), rows]`.
    pub fn matmul_quantized(
        &self,
        path: KernelPath,
        activations: &QuantizedActivations,
        y: &mut [f32],
    ) -> Result<()> {
        let m = activations.rows();
        if activations.cols() != self.cols
            || Some(activations.format()) != ActivationFormat::for_weight_type(self.ggml_type)
        {
            return Err(shape_error(format!(
                "activations ({} columns, {:?}) do not fit a {} matrix of {} columns",
                activations.cols(),
                activations.format(),
                self.ggml_type,
                self.cols
            )));
        }
        if m.checked_mul(self.rows) != Some(y.len()) {
            return Err(shape_error(format!(
                "output has {} values, expected {m} × {}",
                y.len(),
                self.rows
            )));
        }
        if m == 0 || self.rows == 0 {
            return Ok(());
        }
        let kernel = select(self.ggml_type, path)?;
        let blocks_per_row = self.cols / activations.format().block_size();
        let weights = WeightRows {
            data: self.data(),
            row_bytes: self.row_bytes(),
        };
        match (kernel, activations.blocks()) {
            (RowKernel::Q8_0(k), ActivationBlocks::Q8_0(a)) => {
                multiply(k, &weights, a, blocks_per_row, y)
            }
            (RowKernel::Q8_0Quads(k), ActivationBlocks::Q8_0(_)) => multiply(
                k,
                &weights,
                activations.quads(),
                quads_per_row(blocks_per_row),
                y,
            ),
            (RowKernel::Q8_1(k), ActivationBlocks::Q8_1(a)) => {
                multiply(k, &weights, a, blocks_per_row, y)
            }
            (RowKernel::Q8K(k), ActivationBlocks::Q8K(a)) => {
                multiply(k, &weights, a, blocks_per_row, y)
            }
            _ => unreachable!("activation format checked against the weight type above"),
        }
        Ok(())
    }
}

/// The weight rows of a matrix.
struct WeightRows<'a> {
    data: &'a [u8],
    row_bytes: usize,
}

/// Bytes of activation blocks one tile of activation rows may take (kept in L1/L2 while the
/// weight rows of a chunk are swept over it).
const ACTIVATION_TILE_BYTES: usize = 32 * 1024;

/// Below this many weight bytes a decode product runs on the calling thread: a 896 × 128
/// Q5_0/Q8_0 matrix (80–120 KB, 5–8 µs from DRAM on one core) was slower when shared.
const DECODE_PARALLEL_MIN_BYTES: usize = 256 * 1024;

/// Below this many weight bytes a product of several activation rows runs on the calling
/// thread.
const PARALLEL_MIN_BYTES: usize = 64 * 1024;

/// Decode tasks per thread: contiguous runs of rows, claimed in order by the calling thread
/// and the rayon workers that join (4 balanced best when a core is busy elsewhere).
const DECODE_TASKS_PER_THREAD: usize = 4;

/// `y[i, r] = w_r · x_i` for the `m` activation rows in `acts` (row-major, `per_row` elements
/// of the kernel's activation layout each).
fn multiply<A: Sync>(
    kernel: RowsFn<A>,
    weights: &WeightRows<'_>,
    acts: &[A],
    per_row: usize,
    y: &mut [f32],
) {
    let m = acts.len() / per_row;
    if m == 1 {
        decode(kernel, weights, acts, y);
        return;
    }
    let act_rows: Vec<&[A]> = acts.chunks_exact(per_row).collect();
    let rows = weights.data.len() / weights.row_bytes;
    let act_row_bytes = per_row * std::mem::size_of::<A>();
    let tile = (ACTIVATION_TILE_BYTES / act_row_bytes / 4 * 4).clamp(4, m.max(4));
    let threads = rayon::current_num_threads().max(1);
    let chunk_rows = (rows / (threads * 4)).clamp(4, 64);
    // Output transposed to [rows, m]: each chunk of weight rows owns a contiguous slice.
    let run_chunk = |(chunk_index, out): (usize, &mut [f32])| {
        let first_row = chunk_index * chunk_rows;
        let n = out.len() / m;
        let w = &weights.data[first_row * weights.row_bytes..(first_row + n) * weights.row_bytes];
        for tile_start in (0..m).step_by(tile) {
            let tile_rows = &act_rows[tile_start..(tile_start + tile).min(m)];
            kernel(w, weights.row_bytes, tile_rows, &mut out[tile_start..], m);
        }
    };
    let mut transposed = vec![0f32; rows * m];
    if weights.data.len() < PARALLEL_MIN_BYTES || threads == 1 {
        transposed
            .chunks_mut(chunk_rows * m)
            .enumerate()
            .for_each(run_chunk);
    } else {
        transposed
            .par_chunks_mut(chunk_rows * m)
            .enumerate()
            .for_each(run_chunk);
    }
    for (r, values) in transposed.chunks_exact(m).enumerate() {
        for (i, &v) in values.iter().enumerate() {
            y[i * rows + r] = v;
        }
    }
}

/// `y = W x` for one activation row `x`: contiguous runs of rows shared between the calling
/// thread and the rayon workers that are free ([`share`]), or all on the calling thread for a
/// small matrix.
fn decode<A: Sync>(kernel: RowsFn<A>, weights: &WeightRows<'_>, x: &[A], y: &mut [f32]) {
    let rows = y.len();
    let row_bytes = weights.row_bytes;
    let threads = rayon::current_num_threads().max(1);
    if weights.data.len() < DECODE_PARALLEL_MIN_BYTES || threads == 1 {
        kernel(weights.data, row_bytes, &[x], y, 1);
        return;
    }
    let chunk = rows.div_ceil(threads * DECODE_TASKS_PER_THREAD);
    let out = OutputRows(y.as_mut_ptr());
    share(rows.div_ceil(chunk), threads - 1, |task| {
        let first = task * chunk;
        let n = chunk.min(rows - first);
        // SAFETY: `share` runs each task once, and task `i` alone writes rows
        // `i·chunk..i·chunk + n` of `y`, which outlives `share`.
        let out = unsafe { out.rows(first, n) };
        kernel(
            &weights.data[first * row_bytes..(first + n) * row_bytes],
            row_bytes,
            &[x],
            out,
            1,
        );
    });
}

/// The output of [`decode`], written in disjoint runs of rows by several threads.
struct OutputRows(*mut f32);

// SAFETY: the tasks of `decode` write disjoint rows.
unsafe impl Sync for OutputRows {}

impl OutputRows {
    /// Rows `first..first + n`.
    ///
    /// # Safety
    /// They must be inside the output and written by no one else while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn rows(&self, first: usize, n: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(first), n)
    }
}

/// Dot products of one weight row (`weight_row`: whole blocks of `weight_type`) with every row
/// of `activations`, on `path`, into `out` (one value per activation row).
pub fn dot_rows(
    path: KernelPath,
    weight_type: GgmlType,
    weight_row: &[u8],
    activations: &QuantizedActivations,
    out: &mut [f32],
) -> Result<()> {
    let matrix = QuantMatrix::new(weight_type, 1, activations.cols(), weight_row.to_vec())?;
    matrix.matmul_quantized(path, activations, out)
}
