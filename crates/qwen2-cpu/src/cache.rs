//! In-place writes into the KV cache.
//!
//! burn-flex 0.21's `slice_assign` clones its destination's storage handle before writing
//! (`to_contiguous` returns a shared clone while the original is alive), so `Arc::make_mut`
//! copies the whole tensor: appending one position to a `[kv_heads, capacity, head_dim]`
//! cache copied all of it, in every layer, at every decode step.

use burn::prelude::Tensor;
use burn::tensor::{DType, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use half::{bf16, f16};

use crate::host::primitive;

/// Writes `rows` `[heads, seq, dim]` into positions `start..start + seq` of `cache` `[heads,
/// capacity, dim]` in place; `false` (with `cache` unchanged) when the shapes or dtypes do not
/// match, the cache is not a whole contiguous buffer, or its storage is shared.
pub fn write_rows(cache: &mut Tensor<Flex, 3>, start: usize, rows: &Tensor<Flex, 3>) -> bool {
    let [heads, capacity, dim] = cache.dims();
    let [row_heads, seq, row_dim] = rows.dims();
    if row_heads != heads || row_dim != dim || start + seq > capacity {
        return false;
    }
    let device = cache.device();
    let placeholder = Tensor::<Flex, 3>::empty([0, 0, 0], &device);
    let mut dst = std::mem::replace(cache, placeholder)
        .into_primitive()
        .tensor();
    let src = primitive(rows).to_contiguous();
    let whole = dst.layout().contiguous_offsets() == Some((0, heads * capacity * dim));
    let shape = Shape {
        heads,
        capacity,
        dim,
        start,
        seq,
    };
    let written = whole
        && src.dtype() == dst.dtype()
        && match dst.dtype() {
            DType::F32 => copy::<f32>(&mut dst, &src, &shape),
            DType::BF16 => copy::<bf16>(&mut dst, &src, &shape),
            DType::F16 => copy::<f16>(&mut dst, &src, &shape),
            _ => false,
        };
    *cache = Tensor::from_primitive(TensorPrimitive::Float(dst));
    written
}

/// Where the rows go.
struct Shape {
    heads: usize,
    capacity: usize,
    dim: usize,
    start: usize,
    seq: usize,
}

/// Copies head by head; `false` if `dst`'s storage is shared or `src` is not contiguous.
fn copy<E: burn::tensor::Element + bytemuck::Pod>(
    dst: &mut FlexTensor,
    src: &FlexTensor,
    s: &Shape,
) -> bool {
    let (Some(src), Some(dst)) = (src.as_slice::<E>(), dst.try_storage_mut::<E>()) else {
        return false;
    };
    let span = s.seq * s.dim;
    for head in 0..s.heads {
        dst[(head * s.capacity + s.start) * s.dim..][..span]
            .copy_from_slice(&src[head * span..][..span]);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{FloatDType, TensorData};

    fn ramp(shape: [usize; 3], from: f32) -> Tensor<Flex, 3> {
        let n = shape.iter().product::<usize>();
        let values: Vec<f32> = (0..n).map(|i| from + i as f32).collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    #[test]
    fn rows_land_where_slice_assign_puts_them_in_every_dtype() {
        for dtype in [FloatDType::F32, FloatDType::BF16, FloatDType::F16] {
            let cache = ramp([2, 8, 4], 0.0).cast(dtype);
            // A head-split view, as attention hands it over.
            let rows = ramp([3, 2, 4], 100.0).swap_dims(0, 1).cast(dtype);
            let expected = cache
                .clone()
                .slice_assign([0..2, 5..8, 0..4], rows.clone())
                .into_data();
            let mut ours = cache;
            assert!(write_rows(&mut ours, 5, &rows), "{dtype:?}");
            assert_eq!(ours.into_data(), expected, "{dtype:?}");
        }
    }

    #[test]
    fn the_write_is_in_place() {
        let mut cache = ramp([2, 8, 4], 0.0);
        let before = primitive(&cache).as_slice::<f32>().unwrap().as_ptr();
        assert!(write_rows(&mut cache, 1, &ramp([2, 1, 4], 50.0)));
        assert_eq!(
            primitive(&cache).as_slice::<f32>().unwrap().as_ptr(),
            before
        );
    }

    #[test]
    fn a_mismatch_or_a_shared_cache_is_left_to_the_caller() {
        let original = ramp([2, 8, 4], 0.0);
        let mut cache = original.clone();
        // Shared storage: the other handle must not see the write.
        assert!(!write_rows(&mut cache, 0, &ramp([2, 1, 4], 9.0)));
        assert_eq!(cache.clone().into_data(), original.clone().into_data());
        drop(original);
        assert!(
            !write_rows(&mut cache, 8, &ramp([2, 1, 4], 9.0)),
            "past capacity"
        );
        assert!(!write_rows(&mut cache, 0, &ramp([1, 1, 4], 9.0)), "heads");
        let bf16_rows = ramp([2, 1, 4], 9.0).cast(FloatDType::BF16);
        assert!(!write_rows(&mut cache, 0, &bf16_rows), "dtype");
        assert_eq!(cache.dims(), [2, 8, 4]);
    }
}
