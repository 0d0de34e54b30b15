//! The kernel's routes against burn's graph.

use burn::prelude::Tensor;
use burn::tensor::{Distribution, FloatDType};
use burn_flex::Flex;
use qwen2_core::model::{FusedKernels, MatmulKernel, ProjectionWeight};
use qwen2_gguf::GgmlType;
use qwen2_quant::QuantMatrix;

use super::CpuMatmul;

fn max_diff(a: Tensor<Flex, 2>, b: Tensor<Flex, 2>) -> f32 {
    let a = a.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap();
    let b = b.cast(FloatDType::F32).into_data().to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn one_row_products_equal_burns_matmul() {
    let dev = Default::default();
    for (k, n) in [(64usize, 96usize), (37, 1000), (896, 128), (200, 7)] {
        let x = Tensor::<Flex, 2>::random([1, k], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<Flex, 2>::random([k, n], Distribution::Normal(0.0, 1.0), &dev);
        let wt = Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 1.0), &dev);
        // f32, [in, out] and the transposed view of [out, in]: f32 rounding only.
        for weight in [w.clone(), wt.clone().transpose()] {
            let fast = CpuMatmul
                .matmul(&x, &weight, None, FloatDType::F32)
                .expect("handled");
            let reference = x.clone().matmul(weight.clone());
            assert!(
                max_diff(fast, reference) < 1e-4 * (k as f32).sqrt(),
                "f32 {k}x{n}"
            );
        }
        // bf16 weights and input, f32 accumulation, bf16 result: within bf16 rounding.
        let xb = x.clone().cast(FloatDType::BF16);
        for weight in [w.clone(), wt.clone().transpose()] {
            let wb = weight.cast(FloatDType::BF16);
            let fast = CpuMatmul
                .matmul(&xb, &wb, None, FloatDType::BF16)
                .expect("handled");
            let reference = xb
                .clone()
                .cast(FloatDType::F32)
                .matmul(wb.clone().cast(FloatDType::F32));
            let scale = reference.clone().abs().max().into_scalar();
            assert!(
                max_diff(fast, reference) <= scale * 2.0f32.powi(-8),
                "bf16 {k}x{n}"
            );
        }
    }
}

#[test]
fn many_row_products_equal_burns_matmul() {
    let dev = Default::default();
    for (dtype, steps) in [
        (FloatDType::F32, 2.0f32.powi(-20)),
        (FloatDType::BF16, 2.0f32.powi(-8)),
    ] {
        let x =
            Tensor::<Flex, 2>::random([5, 40], Distribution::Normal(0.0, 1.0), &dev).cast(dtype);
        let w = Tensor::<Flex, 2>::random([72, 40], Distribution::Normal(0.0, 1.0), &dev)
            .cast(dtype)
            .transpose();
        let fast = CpuMatmul.matmul(&x, &w, None, dtype).expect("handled");
        let reference = x.clone().matmul(w.clone());
        assert_eq!(fast.dims(), [5, 72]);
        assert_eq!(fast.dtype(), reference.dtype());
        // Same arithmetic in another f32 summation order: a few f32 roundings of the
        // largest output, or (bf16) one bf16 rounding step.
        let scale = reference
            .clone()
            .cast(FloatDType::F32)
            .abs()
            .max()
            .into_scalar();
        assert!(max_diff(fast, reference) <= scale * steps, "{dtype:?}");
    }
}

#[test]
fn other_shapes_and_dtypes_are_left_to_burn() {
    let dev = Default::default();
    let x2 = Tensor::<Flex, 2>::random([2, 8], Distribution::Default, &dev);
    let w = Tensor::<Flex, 2>::random([8, 4], Distribution::Default, &dev);
    assert!(
        CpuMatmul.matmul(&x2, &w, None, FloatDType::F32).is_none(),
        "two rows"
    );
    let x1 = Tensor::<Flex, 2>::random([1, 8], Distribution::Default, &dev);
    let wh = w.clone().cast(FloatDType::F16);
    assert!(
        CpuMatmul.matmul(&x1, &wh, None, FloatDType::F32).is_none(),
        "f16 weights"
    );
    assert!(
        CpuMatmul.matmul(&x1, &w, None, FloatDType::F16).is_none(),
        "f16 compute"
    );
}

/// The f32 values of a tensor.
fn values(t: &Tensor<Flex, 2>) -> Vec<f32> {
    t.clone()
        .cast(FloatDType::F32)
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

/// Random weights `[n, k]` of a projection, dense in `dtype` or quantized to `ty`.
fn weight(n: usize, k: usize, dtype: FloatDType, ty: Option<GgmlType>) -> ProjectionWeight<Flex> {
    let w = Tensor::<Flex, 2>::random([n, k], Distribution::Normal(0.0, 0.5), &Default::default());
    match ty {
        None => ProjectionWeight::Dense(w.cast(dtype)),
        Some(ty) => ProjectionWeight::Quantized(std::sync::Arc::new(
            QuantMatrix::from_f32(ty, n, k, &values(&w)).unwrap(),
        )),
    }
}

/// One projection through the kernel, as the graph calls it.
fn project(
    x: &Tensor<Flex, 2>,
    w: &ProjectionWeight<Flex>,
    bias: Option<&Tensor<Flex, 1>>,
    dtype: FloatDType,
) -> Tensor<Flex, 2> {
    match w {
        ProjectionWeight::Dense(w) => CpuMatmul.matmul(x, &w.clone().transpose(), bias, dtype),
        ProjectionWeight::Quantized(q) => CpuMatmul.matmul_quantized(x, q, bias, dtype),
    }
    .expect("handled")
}

/// The cases every route sees: one row (decode), a few rows (dense tiles or blocks), and
/// enough rows for the quantized tiles; f32 and bf16; dense and two quantized types.
fn cases() -> Vec<(usize, FloatDType, Option<GgmlType>)> {
    let mut cases = Vec::new();
    for m in [1, 3, 20] {
        for dtype in [FloatDType::F32, FloatDType::BF16] {
            for ty in [None, Some(GgmlType::Q8_0), Some(GgmlType::Q4_K)] {
                cases.push((m, dtype, ty));
            }
        }
    }
    cases
}

#[test]
fn a_bias_is_added_as_the_graph_adds_it() {
    let dev = Default::default();
    // (The last case spans several of the bias pass's parallel chunks.)
    let more = [(64, FloatDType::BF16, None), (64, FloatDType::F32, None)];
    for (m, dtype, ty) in cases().into_iter().chain(more) {
        let (k, n) = if m == 64 { (32, 1100) } else { (256, 72) };
        let x = Tensor::<Flex, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev).cast(dtype);
        let b = Tensor::<Flex, 1>::random([n], Distribution::Normal(0.0, 1.0), &dev).cast(dtype);
        let w = weight(n, k, dtype, ty);
        let fused = project(&x, &w, Some(&b), dtype);
        let graph = project(&x, &w, None, dtype) + b.clone().unsqueeze_dim(0);
        assert_eq!(fused.dtype(), graph.dtype());
        assert_eq!(
            values(&fused),
            values(&graph),
            "{m} rows, {dtype:?}, {ty:?}"
        );
    }
}

#[test]
fn the_fused_mlp_product_equals_two_projections_and_swiglu() {
    let dev = Default::default();
    let (k, n) = (256, 80);
    for (m, dtype, ty) in cases() {
        let x = Tensor::<Flex, 2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev).cast(dtype);
        let (gate, up) = (weight(n, k, dtype, ty), weight(n, k, dtype, ty));
        let fused = CpuMatmul
            .matmul_swiglu(&x, &gate, &up, dtype)
            .expect("handled");
        let (g, u) = (
            project(&x, &gate, None, dtype),
            project(&x, &up, None, dtype),
        );
        let graph = crate::fused::CpuFused.swiglu(&g, &u);
        assert_eq!(fused.dtype(), graph.dtype());
        assert_eq!(
            values(&fused),
            values(&graph),
            "{m} rows, {dtype:?}, {ty:?}"
        );
    }
    // Mismatched shapes are left to the graph.
    let x = Tensor::<Flex, 2>::random([3, 64], Distribution::Default, &dev);
    let (gate, up) = (
        weight(8, 64, FloatDType::F32, None),
        weight(9, 64, FloatDType::F32, None),
    );
    assert!(CpuMatmul
        .matmul_swiglu(&x, &gate, &up, FloatDType::F32)
        .is_none());
}
