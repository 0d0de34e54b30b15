//! Times burn-flex matmuls at decode shapes (M = 1): contiguous [in, out] weights, transposed
//! views of [out, in], f32 and bf16. `cargo run --release -p qwen2-cpu --example matmul_probe`
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::{Distribution, FloatDType};
use burn_flex::Flex;

fn time(label: &str, f: impl Fn() -> Tensor<Flex, 2>) {
    let _ = f().into_data();
    let reps = 20;
    let t = Instant::now();
    for _ in 0..reps {
        let _ = f().into_data();
    }
    println!(
        "{label:50} {:8.3} ms",
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    );
}

fn main() {
    let dev = Default::default();
    for (k, n) in [
        (896usize, 4864usize),
        (4864, 896),
        (896, 896),
        (896, 151936),
    ] {
        let x = Tensor::<Flex, 2>::random([1, k], Distribution::Default, &dev);
        let w = Tensor::<Flex, 2>::random([k, n], Distribution::Default, &dev);
        let wt_src = Tensor::<Flex, 2>::random([n, k], Distribution::Default, &dev);
        time(&format!("f32 [1,{k}] x [{k},{n}] contiguous"), || {
            x.clone().matmul(w.clone())
        });
        time(&format!("f32 [1,{k}] x [{n},{k}]^T view"), || {
            x.clone().matmul(wt_src.clone().transpose())
        });
        let xb = x.clone().cast(FloatDType::BF16);
        let wb = w.clone().cast(FloatDType::BF16);
        time(&format!("bf16 [1,{k}] x [{k},{n}] contiguous"), || {
            xb.clone().matmul(wb.clone())
        });
        let x8 = Tensor::<Flex, 2>::random([128, k], Distribution::Default, &dev);
        time(&format!("f32 [128,{k}] x [{k},{n}] contiguous"), || {
            x8.clone().matmul(w.clone())
        });
        time(&format!("f32 [128,{k}] x [{n},{k}]^T view"), || {
            x8.clone().matmul(wt_src.clone().transpose())
        });
        let x8b = x8.clone().cast(FloatDType::BF16);
        time(&format!("bf16 [128,{k}] x [{k},{n}] contiguous"), || {
            x8b.clone().matmul(wb.clone())
        });
    }
}
