//! The order records are trained in: micro-batches of `batch_size` records in file order (or a
//! seeded shuffle per epoch), `grad_accum` micro-batches per optimizer step, epochs back to
//! back. Everything is a function of the step index, so a resumed run sees the same batches.

use qwen2_core::sampling::SplitMix64;

use crate::data::{Example, IGNORE};

/// Which records each optimizer step trains on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// Records in the dataset.
    pub records: usize,
    /// Records per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Seed of the per-epoch shuffle; `None` keeps file order.
    pub shuffle: Option<u64>,
}

impl BatchPlan {
    /// Micro-batches in one epoch (the last one may be short).
    pub fn micro_batches_per_epoch(&self) -> usize {
        self.records.div_ceil(self.batch_size)
    }

    /// Optimizer steps needed for `epochs` passes over the data.
    pub fn steps_for_epochs(&self, epochs: usize) -> usize {
        (epochs * self.micro_batches_per_epoch()).div_ceil(self.grad_accum)
    }

    /// The epoch (0-based, fractional) reached after `steps` steps.
    pub fn epoch_after(&self, steps: usize) -> f64 {
        (steps * self.grad_accum) as f64 / self.micro_batches_per_epoch() as f64
    }

    /// Record order of `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.records).collect();
        if let Some(seed) = self.shuffle {
            let mut rng = SplitMix64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for i in (1..order.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
        }
        order
    }

    /// Record indices of each micro-batch of optimizer step `step`.
    pub fn step(&self, step: usize) -> Vec<Vec<usize>> {
        let per_epoch = self.micro_batches_per_epoch();
        (step * self.grad_accum..(step + 1) * self.grad_accum)
            .map(|k| {
                let (epoch, j) = (k / per_epoch, k % per_epoch);
                let order = self.order(epoch);
                order[j * self.batch_size..((j + 1) * self.batch_size).min(self.records)].to_vec()
            })
            .collect()
    }
}

/// One micro-batch ready for the model.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    /// Token rows (right-padded by the model's batch).
    pub rows: Vec<Vec<u32>>,
    /// Positions that carry loss: index into the flattened `[batch * seq]` positions, and
    /// the target id (the label of the next position).
    pub targets: Vec<(usize, u32)>,
    /// Padded length of the rows.
    pub seq: usize,
}

impl MicroBatch {
    /// Builds the micro-batch of `records` from `examples`.
    pub fn new(examples: &[Example], records: &[usize]) -> Self {
        let seq = records
            .iter()
            .map(|&r| examples[r].input_ids.len())
            .max()
            .unwrap_or(0);
        let mut targets = Vec::new();
        for (row, &r) in records.iter().enumerate() {
            let ex = &examples[r];
            for t in 0..ex.labels.len().saturating_sub(1) {
                let label = ex.labels[t + 1];
                if label != IGNORE {
                    targets.push((row * seq + t, label as u32));
                }
            }
        }
        MicroBatch {
            rows: records
                .iter()
                .map(|&r| examples[r].input_ids.clone())
                .collect(),
            targets,
            seq,
        }
    }

    /// Tokens in the micro-batch (without padding).
    pub fn tokens(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_walk_micro_batches_across_epochs() {
        let plan = BatchPlan {
            records: 5,
            batch_size: 2,
            grad_accum: 2,
            shuffle: None,
        };
        assert_eq!(plan.micro_batches_per_epoch(), 3);
        assert_eq!(plan.step(0), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(plan.step(1), vec![vec![4], vec![0, 1]]);
        assert_eq!(plan.steps_for_epochs(2), 3);
    }

    #[test]
    fn shuffle_is_seeded_and_a_permutation() {
        let plan = BatchPlan {
            records: 50,
            batch_size: 4,
            grad_accum: 1,
            shuffle: Some(7),
        };
        let (a, b) = (plan.order(0), plan.order(1));
        assert_ne!(a, b);
        assert_eq!(a, plan.order(0));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn targets_follow_the_shifted_labels() {
        let ex = vec![
            Example {
                input_ids: vec![5, 6, 7],
                labels: vec![IGNORE, 6, 7],
            },
            Example {
                input_ids: vec![1, 2],
                labels: vec![1, IGNORE],
            },
        ];
        let mb = MicroBatch::new(&ex, &[0, 1]);
        assert_eq!(mb.seq, 3);
        assert_eq!(mb.targets, vec![(0, 6), (1, 7)]);
    }
}
