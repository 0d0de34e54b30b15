//! Finished sequences' KV caches, kept so that a new request sharing a prefix with one of them
//! (multi-turn chat resends the whole history) prefills only what is new.

use burn::prelude::Backend;
use qwen2_core::KvCache;

/// One idle cache: the plan it was computed under and the ids of its valid positions.
struct Entry<B: Backend> {
    plan: usize,
    ids: Vec<u32>,
    cache: KvCache<B>,
}

/// Idle caches, oldest first.
pub struct PrefixPool<B: Backend> {
    entries: Vec<Entry<B>>,
    capacity: usize,
}

impl<B: Backend> PrefixPool<B> {
    /// A pool keeping at most `capacity` caches.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Vec::new(),
            capacity,
        }
    }

    /// Keeps `cache`, whose first `ids.len()` positions hold `ids` under plan `plan`; drops the
    /// oldest cache when the pool is full.
    pub fn put(&mut self, plan: usize, mut ids: Vec<u32>, cache: KvCache<B>) {
        if self.capacity == 0 {
            return;
        }
        ids.truncate(cache.len());
        if self.entries.len() >= self.capacity {
            self.entries.remove(0);
        }
        self.entries.push(Entry { plan, ids, cache });
    }

    /// A cache for `prompt` under `plan`: the idle one sharing the longest prefix with it,
    /// truncated to that prefix (at most `prompt.len() - 1` positions, so at least one token is
    /// fed and yields logits), with the number of reused positions. `None` when no cache of the
    /// plan is idle.
    pub fn take(&mut self, plan: usize, prompt: &[u32]) -> Option<(KvCache<B>, usize)> {
        let (best, reuse) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.plan == plan)
            .map(|(i, e)| {
                let common = e.ids.iter().zip(prompt).take_while(|(a, b)| a == b).count();
                (i, common.min(prompt.len().saturating_sub(1)))
            })
            // The longest prefix; among equals the most recent.
            .max_by_key(|&(i, n)| (n, i))?;
        let mut entry = self.entries.remove(best);
        entry.cache.truncate(reuse);
        Some((entry.cache, reuse))
    }
}
