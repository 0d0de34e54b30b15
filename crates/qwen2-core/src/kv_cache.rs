//! A preallocated key/value cache, kept outside the model so one model can serve many sequences.

use burn::prelude::{Backend, Tensor};
use burn::tensor::FloatDType;

use crate::error::{Error, Result};
use crate::model::FusedKernels;

/// Keys and values of one decoder layer.
pub struct LayerCache<B: Backend> {
    /// Keys after RoPE, `[kv_heads, capacity, head_dim]`; rows `0..len` are valid.
    keys: Tensor<B, 3>,
    /// Values, `[kv_heads, capacity, head_dim]`; rows `0..len` are valid.
    values: Tensor<B, 3>,
}

/// The cache of every layer, plus how many positions it holds.
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
    len: usize,
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    /// Allocates room for `capacity` positions in each of `layers` layers.
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: FloatDType,
        device: &B::Device,
    ) -> Self {
        let zeros = || Tensor::zeros([kv_heads, capacity, head_dim], (device, dtype.into()));
        KvCache {
            layers: (0..layers)
                .map(|_| LayerCache {
                    keys: zeros(),
                    values: zeros(),
                })
                .collect(),
            len: 0,
            capacity,
        }
    }

    /// Positions already cached (the absolute position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The dtype keys and values are stored in.
    pub fn dtype(&self) -> burn::tensor::DType {
        self.layers
            .first()
            .map_or(burn::tensor::DType::F32, |l| l.keys.dtype())
    }

    /// Forgets every cached position (the memory is kept).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Drops cached positions from `len` on, e.g. to rewind a conversation.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes room for at least `needed` positions (at most `max`), keeping what is cached.
    /// Grows by doubling, so a long conversation reallocates only a few times.
    pub fn reserve(&mut self, needed: usize, max: usize) {
        if needed <= self.capacity {
            return;
        }
        let capacity = needed.max(self.capacity * 2).min(max.max(needed));
        tracing::debug!(from = self.capacity, to = capacity, "growing the KV cache");
        let len = self.len;
        for layer in &mut self.layers {
            let [heads, _, dim] = layer.keys.dims();
            let (device, dtype) = (layer.keys.device(), layer.keys.dtype());
            let grow = |old: &Tensor<B, 3>| {
                let fresh = Tensor::<B, 3>::zeros([heads, capacity, dim], (&device, dtype));
                if len == 0 {
                    return fresh;
                }
                let valid = old.clone().slice([0..heads, 0..len, 0..dim]);
                fresh.slice_assign([0..heads, 0..len, 0..dim], valid)
            };
            layer.keys = grow(&layer.keys);
            layer.values = grow(&layer.values);
        }
        self.capacity = capacity;
    }

    /// Checks that `extra` more positions fit.
    pub fn check_room(&self, extra: usize) -> Result<()> {
        if self.len + extra > self.capacity {
            return Err(Error::ContextOverflow {
                requested: self.len + extra,
                capacity: self.capacity,
                limit: format!("KV cache of {} positions", self.capacity),
            });
        }
        Ok(())
    }

    /// Stores `keys`/`values` (`[kv_heads, seq, head_dim]`) of `layer` at positions
    /// `len..len + seq` and returns all valid keys and values, `[kv_heads, len + seq, head_dim]`.
    /// Does not advance `len`: call [`KvCache::advance`] once every layer has appended.
    ///
    /// `kernels` write the rows in place where they can
    /// ([`FusedKernels::cache_write`]); otherwise `slice_assign` does, which on burn-flex
    /// 0.21 copies the whole cache tensor each time.
    pub fn append(
        &mut self,
        layer: usize,
        keys: Tensor<B, 3>,
        values: Tensor<B, 3>,
        kernels: Option<&dyn FusedKernels<B>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [heads, seq, dim] = keys.dims();
        let (start, end) = (self.len, self.len + seq);
        let cache = &mut self.layers[layer];
        let dtype = cache.keys.dtype();
        let device = keys.device();
        let write = |cache: &mut Tensor<B, 3>, rows: Tensor<B, 3>| {
            let rows = rows.cast(dtype);
            if kernels.is_some_and(|kern| kern.cache_write(cache, start, &rows)) {
                return;
            }
            // Replace with a placeholder so the cache tensor is uniquely owned.
            let old = std::mem::replace(cache, Tensor::<B, 3>::empty([0, 0, 0], &device));
            *cache = old.slice_assign([0..heads, start..end, 0..dim], rows);
        };
        write(&mut cache.keys, keys);
        write(&mut cache.values, values);
        (
            cache.keys.clone().slice([0..heads, 0..end, 0..dim]),
            cache.values.clone().slice([0..heads, 0..end, 0..dim]),
        )
    }

    /// Marks `seq` more positions as valid.
    pub fn advance(&mut self, seq: usize) {
        self.len += seq;
    }
}
