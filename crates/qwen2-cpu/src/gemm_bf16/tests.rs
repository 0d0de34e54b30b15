//! The kernel against an f64 reference and the AVX2 path, and its benchmark (x86_64).

use half::bf16;
use rayon::prelude::*;

use super::*;
use crate::gemm::{avx2, has_avx2_fma, SharedOut};

const SKIPPED: &str = "skipped: avx512bf16 not on this CPU";

/// f32 values that are bf16 values, spread over [-1, 1] (what the bf16 plan feeds the kernel).
fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let v = (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0;
            bf16::from_f32(v).to_f32()
        })
        .collect()
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// The exact sums (bf16 products are exact in f64, and so is a sum of a few thousand of them
/// to ~2^-50) and `Σ |x·w|`, per output.
fn reference(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize) -> Vec<(f64, f64)> {
    let mut y = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let terms = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p].to_f32() as f64);
            y.push(terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs())));
        }
    }
    y
}

/// `crate::gemm`'s AVX2 path for bf16 weights (what runs without this module), on the pool.
fn avx2_product(x: &[f32], m: usize, k: usize, w: &[bf16], n: usize) -> Vec<f32> {
    assert!(has_avx2_fma(), "the AVX2 path needs AVX2 and FMA");
    let mut y = vec![0.0f32; m * n];
    let out = SharedOut(y.as_mut_ptr());
    (0..n.div_ceil(48)).into_par_iter().for_each(|t| {
        // SAFETY: checked above; tasks write disjoint columns of `y`, which outlives them.
        unsafe { avx2::block(x, m, k, w, n, t * 48..((t + 1) * 48).min(n), out.get()) }
    });
    y
}

/// `2^-24` (f32's unit roundoff).
const U: f64 = 1.0 / (1u64 << 24) as f64;

#[test]
fn odd_shapes_match_an_f64_reference_and_the_avx2_path() {
    if !cpu_has_bf16_dot() {
        println!("{SKIPPED}");
        return;
    }
    let mut shapes = vec![
        (5, 4871, 13),
        (130, 100, 70),
        (16, 64, 64),
        (128, 896, 100),
        (37, 4864, 53),
        (9, 2, 7),
    ];
    for m in 1..=9 {
        for k in [1, 31, 33, 896] {
            for n in [1, 3, 50, 97] {
                shapes.push((m, k, n));
            }
        }
    }
    // The largest error seen, in units of `2^-24 · Σ |x·w|`, for each path.
    let (mut worst_new, mut worst_old) = (0.0f64, 0.0f64);
    for (m, k, n) in shapes {
        let (x, w) = (values(m * k, 1), to_bf16(&values(n * k, 2)));
        // The pool's products of 8 rows or more with `k` even take the outer-product blocks
        // (a plain f32 sum along k per output); the others the dot-product tiles.
        let new = driver::run(&x, m, k, &w, n, true);
        let serial = driver::run(&x, m, k, &w, n, false);
        let packed = m >= 8 && k % 2 == 0;
        let old = avx2_product(&x, m, k, &w, n);
        let tile_bound = (k / 16 + 8) as f64;
        let new_bound = if packed {
            (k / 2 + 8) as f64
        } else {
            tile_bound
        };
        let old_bound = (k / 8 + 8) as f64;
        let exact = reference(&x, m, k, &w, n);
        for (&a, (exact, abs)) in serial.iter().zip(&exact) {
            let scale = U * abs.max(f64::MIN_POSITIVE);
            let e = (a as f64 - exact).abs();
            assert!(
                e <= tile_bound * scale,
                "{m}x{k}x{n}: serial {a} vs exact {exact}"
            );
        }
        if !packed {
            assert!(
                new == serial,
                "{m}x{k}x{n}: pooled and serial tiles sum alike"
            );
        }
        for ((&a, &b), &(exact, abs)) in new.iter().zip(&old).zip(&exact) {
            let scale = U * abs.max(f64::MIN_POSITIVE);
            let (e_new, e_old) = ((a as f64 - exact).abs(), (b as f64 - exact).abs());
            assert!(
                e_new <= new_bound * scale,
                "{m}x{k}x{n}: {a} vs exact {exact}"
            );
            assert!(
                e_old <= old_bound * scale,
                "{m}x{k}x{n}: avx2 {b} vs exact {exact}"
            );
            assert!((a - b).abs() as f64 <= (new_bound + old_bound) * scale);
            (worst_new, worst_old) = (worst_new.max(e_new / scale), worst_old.max(e_old / scale));
        }
    }
    println!("largest error / (2^-24 Σ|x·w|): vdpbf16ps {worst_new:.2}, avx2 {worst_old:.2}");
}

#[test]
fn other_activations_are_rounded_to_nearest_even() {
    if !cpu_has_bf16_dot() {
        println!("{SKIPPED}");
        return;
    }
    let (m, k, n) = (3, 70, 5);
    let mut x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
    // Exact ties: halfway between two bf16 values, even mantissa below and odd below.
    x[0] = f32::from_bits(0x3f80_8000);
    x[1] = f32::from_bits(0x3f81_8000);
    let rounded: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    assert_eq!((rounded[0], rounded[1]), (1.0, f32::from_bits(0x3f82_0000)));
    let w = to_bf16(&values(n * k, 5));
    assert_eq!(
        driver::run(&x, m, k, &w, n, true),
        driver::run(&rounded, m, k, &w, n, true)
    );
}

#[test]
fn prefill_products_report_which_path_ran() {
    let (m, k, n) = (7, 96, 40);
    let (x, w) = (values(m * k, 3), to_bf16(&values(n * k, 4)));
    let got = crate::gemm::matmul_rows(&x, m, k, &w, n);
    let var = std::env::var(DISABLE_VAR).ok();
    if enabled() {
        println!("bf16 weights: avx512bf16 vdpbf16ps kernel ({DISABLE_VAR}={var:?})");
        assert_eq!(got, driver::run(&x, m, k, &w, n, true));
    } else {
        if cpu_has_bf16_dot() {
            println!("bf16 weights: AVX2 kernel, turned off by {DISABLE_VAR}={var:?}");
        } else {
            println!("bf16 weights: AVX2 kernel; {SKIPPED}");
        }
        if has_avx2_fma() {
            assert_eq!(got, avx2_product(&x, m, k, &w, n));
        }
    }
    // f32 weights never take it.
    let wf: Vec<f32> = w.iter().map(|v| v.to_f32()).collect();
    let yf = crate::gemm::matmul_rows(&x, m, k, &wf, n);
    if has_avx2_fma() {
        assert_eq!(
            yf,
            avx2_product(&x, m, k, &w, n),
            "f32 holds the same values"
        );
    }
}

/// This process's CPU time (user + system) in seconds, from `/proc/self/stat` (10 ms ticks);
/// NaN where that file is missing.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name's closing parenthesis; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    field(14)
        .zip(field(15))
        .map_or(f64::NAN, |(u, s)| (u + s) / 100.0)
}

/// GFLOP/s of the AVX2 and vdpbf16ps paths on the 0.5B model's prefill shapes with two
/// threads: the best wall-clock run, and FLOPs per CPU-second over all runs divided by two
/// (what each core does while it runs, which other jobs on the machine disturb less):
/// `cargo test -p qwen2-cpu --release gemm_bf16 -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark"]
fn bench_prefill_shapes() {
    if !cpu_has_bf16_dot() {
        println!("{SKIPPED}");
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a pool");
    let m = 128;
    for (k, n) in [(896, 4864), (4864, 896), (896, 151936)] {
        let (x, w) = (values(m * k, 7), to_bf16(&values(n * k, 8)));
        let gflop = 2.0 * (m * n * k) as f64 / 1e9;
        // (best wall-clock GFLOP/s, GFLOP per CPU-second × 2) over at least a second of runs.
        let measure = |f: &(dyn Fn() -> Vec<f32> + Sync)| {
            pool.install(|| {
                std::hint::black_box(f());
                let (start, cpu) = (std::time::Instant::now(), cpu_seconds());
                let (mut best, mut runs) = (f64::MAX, 0);
                while runs < 3 || start.elapsed().as_secs_f64() < 1.0 {
                    let t = std::time::Instant::now();
                    std::hint::black_box(f());
                    best = best.min(t.elapsed().as_secs_f64());
                    runs += 1;
                }
                let per_cpu = gflop * runs as f64 / (cpu_seconds() - cpu) * 2.0;
                (gflop / best, per_cpu)
            })
        };
        let old = measure(&|| avx2_product(&x, m, k, &w, n));
        let tiles = measure(&|| driver::run_tiles(&x, m, k, &w, n));
        let new = measure(&|| driver::run(&x, m, k, &w, n, true));
        println!(
            "[{m}, {k}] x [{k}, {n}]^T GFLOP/s, best wall (per CPU-second x 2): \
             avx2 {:.0} ({:.0}), vdpbf16ps dot tiles {:.0} ({:.0}), outer-product blocks \
             {:.0} ({:.0}): {:.2}x ({:.2}x) the tiles",
            old.0,
            old.1,
            tiles.0,
            tiles.1,
            new.0,
            new.1,
            new.0 / tiles.0,
            new.1 / tiles.1
        );
    }
}

#[test]
fn quantized_tiles_equal_the_bf16_product_of_the_dequantized_weights() {
    if !cpu_has_bf16_dot() {
        println!("{SKIPPED}");
        return;
    }
    use qwen2_gguf::GgmlType;
    // Rows that are not a multiple of the task size, k of one and of several blocks.
    for (ty, n, k) in [
        (GgmlType::Q8_0, 37, 64),
        (GgmlType::Q4_0, 21, 96),
        (GgmlType::Q5_0, 50, 896),
        (GgmlType::Q4_K, 19, 512),
        (GgmlType::Q6_K, 33, 256),
    ] {
        let w = values(n * k, 7);
        let q = qwen2_quant::QuantMatrix::from_f32(ty, n, k, &w).unwrap();
        let wb = qwen2_gguf::dequantize_to_bf16(ty, q.data()).unwrap();
        for m in [1, 5, 16] {
            let x = values(m * k, 3);
            let got = product(
                Input::F32(&x),
                m,
                k,
                &[Matrix::Quantized(&q)],
                n,
                Epilogue::Store(None),
                Round::F32,
            );
            // The same bf16 weights through the same tiles: the same sums, bit for bit.
            let want = driver::run(&x, m, k, &wb, n, true);
            assert_eq!(got, Some(Output::F32(want)), "{ty} {m}x{k}x{n}");
        }
    }
}
