//! Benchmark of the quantized matrix kernels on Qwen2.5-0.5B shapes.
//!
//! `cargo run -p qwen2-quant --release --example bench_quant [-- SECONDS_PER_CASE [TYPE]]`
//!
//! Decode: one `matvec` (activation quantized inside), reported as GB/s of weight bytes read
//! and µs per call; prefill: `matmul` with m = 128 activation rows, reported as GFLOP/s
//! (2 · rows · cols · m). The k-quants need `cols % 256 == 0`, so they cannot store the
//! 896-wide matrices (llama.cpp falls back to other types for those tensors): "n/a".

use std::time::{Duration, Instant};

use qwen2_quant::{available_paths, GgmlType, KernelPath, QuantMatrix};

/// (name, rows = out features, cols = in features).
const SHAPES: [(&str, usize, usize); 3] = [
    ("896->4864 (gate/up)", 4864, 896),
    ("4864->896 (down)", 896, 4864),
    ("896->151936 (lm_head)", 151_936, 896),
];
const TYPES: [GgmlType; 4] = [
    GgmlType::Q4_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
];
const PREFILL_ROWS: usize = 128;

/// A matrix of random blocks with sane f16 scales (quantizing 136M values with the reference
/// k-quant search would take longer than the benchmark).
fn random_matrix(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> QuantMatrix {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let size = ty.type_size();
    let mut data: Vec<u8> = (0..rows * cols / ty.block_size() * size)
        .map(|_| next() as u8)
        .collect();
    let scale_offsets: &[usize] = match ty {
        GgmlType::Q4_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[0],
    };
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for block in data.chunks_exact_mut(size) {
        for &o in scale_offsets {
            block[o..o + 2].copy_from_slice(&scale);
        }
    }
    QuantMatrix::new(ty, rows, cols, data).expect("valid matrix")
}

/// Seconds per call of `f`, the median of batches run for about `budget`.
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    f(); // warm up caches and the thread pool
    let start = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < 3 || (start.elapsed() < budget && samples.len() < 1000) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

struct DecodeResult {
    seconds: f64,
}

fn main() {
    let budget = std::env::args()
        .nth(1)
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_millis(400));
    let only_type = std::env::args()
        .nth(2)
        .and_then(|s| GgmlType::from_name(&s));
    let paths = available_paths();
    println!(
        "qwen2-quant bench: {} rayon threads, paths {:?}, {:?} per case",
        rayon::current_num_threads(),
        paths,
        budget
    );
    println!(
        "{:<6} {:<22} {:<11} {:>10} {:>9} {:>14}",
        "type", "shape", "path", "decode µs", "GB/s", "prefill GF/s"
    );
    // decode seconds per (type, shape index, path), for the token estimate.
    let mut decode: Vec<(GgmlType, usize, KernelPath, DecodeResult)> = Vec::new();
    for ty in TYPES
        .into_iter()
        .filter(|t| only_type.is_none_or(|o| o == *t))
    {
        for (shape_index, &(name, rows, cols)) in SHAPES.iter().enumerate() {
            if !cols.is_multiple_of(ty.block_size()) {
                println!("{ty:<6} {name:<22} {:<11} {:>10}", "-", "n/a");
                continue;
            }
            let matrix = random_matrix(ty, rows, cols, 0x9E37_79B9 + shape_index as u64);
            let x: Vec<f32> = (0..cols * PREFILL_ROWS)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                .collect();
            let mut y = vec![0f32; rows * PREFILL_ROWS];
            for &path in &paths {
                let seconds = time_per_call(budget, || {
                    matrix
                        .matvec_with_path(path, &x[..cols], &mut y[..rows])
                        .unwrap()
                });
                let gbps = matrix.data().len() as f64 / seconds / 1e9;
                // Portable prefill of the 136M-weight lm_head takes many seconds: skipped.
                let prefill = if path == KernelPath::Portable && rows > 100_000 {
                    "-".to_string()
                } else {
                    let seconds = time_per_call(budget, || {
                        matrix
                            .matmul_with_path(path, &x, PREFILL_ROWS, &mut y)
                            .unwrap()
                    });
                    let flops = 2.0 * (rows * cols * PREFILL_ROWS) as f64;
                    format!("{:.1}", flops / seconds / 1e9)
                };
                println!(
                    "{ty:<6} {name:<22} {:<11} {:>10.1} {:>9.2} {:>14}",
                    path.name(),
                    seconds * 1e6,
                    gbps,
                    prefill
                );
                decode.push((ty, shape_index, path, DecodeResult { seconds }));
            }
        }
    }
    println!();
    println!("Decode token-equivalent (24 × (2 × gate/up + down) + lm_head, these shapes only):");
    for ty in TYPES
        .into_iter()
        .filter(|t| only_type.is_none_or(|o| o == *t))
    {
        for &path in &paths {
            let t = |shape: usize| {
                decode
                    .iter()
                    .find(|(t, s, p, _)| *t == ty && *s == shape && *p == path)
                    .map(|(_, _, _, r)| r.seconds)
            };
            match (t(0), t(1), t(2)) {
                (Some(up), Some(down), Some(head)) => {
                    let per_token = 24.0 * (2.0 * up + down) + head;
                    println!(
                        "  {ty:<6} {:<11} {:>8.2} ms/token ({:.1} tokens/s)",
                        path.name(),
                        per_token * 1e3,
                        1.0 / per_token
                    );
                }
                _ => println!(
                    "  {ty:<6} {:<11} n/a (896-wide matrices cannot be {ty})",
                    path.name()
                ),
            }
        }
    }
}
