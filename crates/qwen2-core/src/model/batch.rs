//! Token rows for one forward pass: `[batch, seq]` ids, right-padded, with each row's length.

use crate::error::{Error, Result};

/// A `[batch, seq]` block of token ids. Rows shorter than `seq` are padded on the right; the
/// attention mask hides padded keys, and padded positions' outputs are meaningless (they carry
/// no loss in training and are never sampled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Row-major ids, `[batch * seq]`, padding included.
    ids: Vec<u32>,
    /// Real tokens per row, each in `1..=seq`.
    lengths: Vec<usize>,
    seq: usize,
}

impl Batch {
    /// One unpadded row.
    pub fn single(ids: &[u32]) -> Self {
        Batch {
            ids: ids.to_vec(),
            lengths: vec![ids.len()],
            seq: ids.len(),
        }
    }

    /// `batch` unpadded rows of `seq` positions (the ids are left empty: for masks only).
    pub fn uniform(batch: usize, seq: usize) -> Self {
        Batch {
            ids: Vec::new(),
            lengths: vec![seq; batch],
            seq,
        }
    }

    /// Rows of different lengths, right-padded with `pad_id` to the longest.
    pub fn new(rows: &[&[u32]], pad_id: u32) -> Result<Self> {
        if rows.is_empty() || rows.iter().any(|r| r.is_empty()) {
            return Err(Error::EmptyInput);
        }
        let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * seq);
        for r in rows {
            ids.extend_from_slice(r);
            ids.resize(ids.len() + seq - r.len(), pad_id);
        }
        Ok(Batch {
            ids,
            lengths: rows.iter().map(|r| r.len()).collect(),
            seq,
        })
    }

    /// Number of rows.
    pub fn batch(&self) -> usize {
        self.lengths.len()
    }

    /// Positions per row (the longest row's length).
    pub fn seq(&self) -> usize {
        self.seq
    }

    /// Real tokens in each row.
    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// All ids, row-major `[batch * seq]`, padding included.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Whether any row is shorter than `seq`.
    pub fn is_padded(&self) -> bool {
        self.lengths.iter().any(|&l| l < self.seq)
    }

    /// The real tokens of row `r`.
    pub fn row(&self, r: usize) -> &[u32] {
        &self.ids[r * self.seq..r * self.seq + self.lengths[r]]
    }

    /// Index into the flattened `[batch * seq]` positions of row `r`, position `t`.
    pub fn flat(&self, r: usize, t: usize) -> usize {
        r * self.seq + t
    }
}
