//! A 2-D tensor read a block of rows at a time, as f32: quantizing at load (`--quantize`)
//! then never holds an f32 copy of a whole matrix (the tied embedding's is 545 MB on the 0.5B
//! model).

use std::ops::Range;

use burn::tensor::FloatDType;

use super::{widen, Checkpoint, Shard, SourceDtype};
use crate::error::{Error, Result};

/// The rows of one `[rows, cols]` tensor of a checkpoint (see [`Checkpoint::row_reader`]).
pub struct RowReader<'a> {
    source: Source<'a>,
    cols: usize,
}

enum Source<'a> {
    /// A safetensors tensor in its mapped file (absolute offset `start`, released on drop).
    Mapped {
        shard: &'a Shard,
        start: usize,
        bytes: &'a [u8],
        dtype: SourceDtype,
    },
    /// A GGUF's dense tensor, converted whole.
    Loaded(Vec<f32>),
}

impl Checkpoint {
    /// Tensor `name`, `[rows, cols]` in HF's layout and checked as [`Checkpoint::load`] checks
    /// it, for reading in blocks of rows as f32: safetensors straight from the mapped file; a
    /// GGUF's dense tensor converted whole first (its data is already in memory).
    pub fn row_reader(&self, name: &str, [rows, cols]: [usize; 2]) -> Result<RowReader<'_>> {
        let source = if self.gguf.is_some() {
            let data = self.load(name, &[rows, cols], FloatDType::F32, false)?;
            let values = data
                .into_vec::<f32>()
                .map_err(|e| Error::Invalid(format!("{name}: f32 values expected ({e:?})")))?;
            Source::Loaded(values)
        } else {
            let (shard, start, bytes, dtype) = self.locate(name, &[rows, cols])?;
            Source::Mapped {
                shard,
                start,
                bytes,
                dtype,
            }
        };
        Ok(RowReader { source, cols })
    }
}

impl RowReader<'_> {
    /// Rows `rows` as f32, row-major, into `out` (replacing what it held). Panics when the rows
    /// are past the tensor's end (a caller's bug: the shape was checked when it was opened).
    pub fn read(&self, rows: Range<usize>, out: &mut Vec<f32>) {
        let (from, to) = (rows.start * self.cols, rows.end * self.cols);
        out.clear();
        match &self.source {
            Source::Loaded(values) => out.extend_from_slice(&values[from..to]),
            Source::Mapped { bytes, dtype, .. } => {
                let width = match dtype {
                    SourceDtype::F32 => 4,
                    SourceDtype::Bf16 | SourceDtype::F16 => 2,
                };
                *out = widen(
                    &bytes[from * width..to * width],
                    *dtype,
                    1,
                    to - from,
                    false,
                );
            }
        }
    }
}

impl Drop for RowReader<'_> {
    /// Drops the tensor's file pages, as [`Checkpoint::load`] does after converting.
    fn drop(&mut self) {
        if let Source::Mapped {
            shard,
            start,
            bytes,
            ..
        } = &self.source
        {
            shard.release(*start, bytes.len());
        }
    }
}
