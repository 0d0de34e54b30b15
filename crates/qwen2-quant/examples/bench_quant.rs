//! Benchmark of the quantized matrix kernels on the shapes of a Qwen2.5-0.5B Q4_K_M GGUF.
//!
//! `cargo run -p qwen2-quant --release --example bench_quant -- [SECONDS] [TYPES] [PATHS]
//! [--prefill]`
//!
//! - `SECONDS` per case (default 0.4); `TYPES` a comma list (`q5_0,q8_0`, default all);
//!   `PATHS` a comma list (`avx512vnni`, default every available one).
//! - Decode: one `matvec` (activation quantized inside) per call, the median call reported as
//!   µs and GB/s of weight bytes. "hot" repeats one matrix (it stays in L2/L3 when small);
//!   "cold" cycles through copies filling 128 MiB, so every call streams from DRAM as in a
//!   whole-model decode.
//! - `--prefill`: also `matmul` with m = 128 activation rows, as GFLOP/s (2 · rows · cols · m).
//! - `BENCH_STAT=min`: report the fastest call instead of the median (steadier on a busy
//!   machine when comparing kernels).
//! - Last, a decode token estimate from the cold timings with the file's mix of matrices.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qwen2_quant::{available_paths, GgmlType, KernelPath, QuantMatrix, WeightBytes};

/// (name, rows = out features, cols = in features).
const SHAPES: [(&str, usize, usize); 5] = [
    ("896->896", 896, 896),
    ("896->128", 128, 896),
    ("896->4864", 4864, 896),
    ("4864->896", 896, 4864),
    ("896->151936", 151_936, 896),
];

/// Every (type, shape) measured: the matrices of the Q4_K_M file, plus Q4_0 for comparison.
const CASES: [(GgmlType, usize); 13] = [
    (GgmlType::Q5_0, 0),
    (GgmlType::Q5_0, 1),
    (GgmlType::Q5_0, 2),
    (GgmlType::Q5_0, 3),
    (GgmlType::Q8_0, 0),
    (GgmlType::Q8_0, 1),
    (GgmlType::Q8_0, 2),
    (GgmlType::Q8_0, 3),
    (GgmlType::Q8_0, 4),
    (GgmlType::Q4_0, 2),
    (GgmlType::Q4_0, 3),
    (GgmlType::Q4_K, 3),
    (GgmlType::Q6_K, 3),
];

/// One decode token of the file: (count, type, shape) per matrix kind (24 layers; ffn_down is
/// Q6_K in about half the layers of a Q4_K_M file, Q4_K in the rest).
const TOKEN_MIX: [(usize, GgmlType, usize); 7] = [
    (24 * 2, GgmlType::Q5_0, 0), // attn_q, attn_output
    (24, GgmlType::Q5_0, 1),     // attn_k
    (24, GgmlType::Q8_0, 1),     // attn_v
    (24 * 2, GgmlType::Q5_0, 2), // ffn_gate, ffn_up
    (12, GgmlType::Q4_K, 3),     // ffn_down
    (12, GgmlType::Q6_K, 3),     // ffn_down (more bits)
    (1, GgmlType::Q8_0, 4),      // tied head
];

const PREFILL_ROWS: usize = 128;
const COLD_BYTES: usize = 128 << 20;

/// A buffer of random blocks with sane f16 scales, at least `bytes` long (whole blocks).
fn random_blocks(ty: GgmlType, bytes: usize, seed: u64) -> Arc<Vec<u8>> {
    let mut state = seed | 1;
    let size = ty.type_size();
    let blocks = bytes.div_ceil(size);
    let mut data = Vec::with_capacity(blocks * size);
    while data.len() < blocks * size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(blocks * size);
    let scale_offsets: &[usize] = match ty {
        GgmlType::Q4_K | GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[0],
    };
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for block in data.chunks_exact_mut(size) {
        for &o in scale_offsets {
            block[o..o + 2].copy_from_slice(&scale);
        }
    }
    Arc::new(data)
}

/// Seconds per call of `f(call_index)`: the median of calls run for about `budget`.
fn time_per_call(budget: Duration, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..3 {
        f(i); // warm up caches and the thread pool
    }
    let start = Instant::now();
    let mut samples = Vec::new();
    while samples.len() < 5 || (start.elapsed() < budget && samples.len() < 20_000) {
        let t = Instant::now();
        f(samples.len());
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    if std::env::var("BENCH_STAT").is_ok_and(|s| s == "min") {
        return samples[0];
    }
    samples[samples.len() / 2]
}

/// A comma list of names, parsed with `parse`; `None` for "all".
fn list<T>(arg: Option<&String>, parse: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    let arg = arg?;
    if arg == "all" {
        return None;
    }
    Some(
        arg.split(',')
            .map(|s| parse(s).unwrap_or_else(|| panic!("unknown name {s:?}")))
            .collect(),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let prefill = args.iter().any(|a| a == "--prefill");
    let positional: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let budget = positional
        .first()
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_millis(400));
    let types = list(positional.get(1).copied(), |s| {
        GgmlType::from_name(&s.to_ascii_uppercase())
    });
    let paths =
        list(positional.get(2).copied(), KernelPath::from_name).unwrap_or_else(available_paths);
    println!(
        "qwen2-quant bench: {} rayon threads, paths {paths:?}, {budget:?} per case",
        rayon::current_num_threads(),
    );
    println!(
        "{:<5} {:<12} {:<10} {:>9} {:>7} {:>9} {:>7} {:>8}",
        "type", "shape", "path", "hot µs", "GB/s", "cold µs", "GB/s", "pf GF/s"
    );
    // Cold decode seconds per (type, shape, path), for the token estimate.
    let mut cold: Vec<(GgmlType, usize, KernelPath, f64)> = Vec::new();
    for (ty, shape) in CASES {
        if types.as_ref().is_some_and(|t| !t.contains(&ty)) {
            continue;
        }
        let (name, rows, cols) = SHAPES[shape];
        let bytes = rows * cols / ty.block_size() * ty.type_size();
        let copies = (COLD_BYTES / bytes).max(1);
        let owner = random_blocks(ty, copies * bytes, 0x9E37_79B9 + shape as u64);
        let matrices: Vec<QuantMatrix> = (0..copies)
            .map(|i| {
                let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = owner.clone();
                let data = WeightBytes::new(owner, i * bytes..(i + 1) * bytes).unwrap();
                QuantMatrix::new(ty, rows, cols, data).unwrap()
            })
            .collect();
        let x: Vec<f32> = (0..cols * PREFILL_ROWS)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let mut y = vec![0f32; rows * PREFILL_ROWS];
        for &path in &paths {
            if path == KernelPath::Portable && rows > 100_000 {
                continue;
            }
            let hot = time_per_call(budget, |_| {
                matrices[0]
                    .matvec_with_path(path, &x[..cols], &mut y[..rows])
                    .unwrap()
            });
            let cold_s = time_per_call(budget, |i| {
                matrices[i % copies]
                    .matvec_with_path(path, &x[..cols], &mut y[..rows])
                    .unwrap()
            });
            let pf = if prefill && path != KernelPath::Portable {
                let seconds = time_per_call(budget, |_| {
                    matrices[0]
                        .matmul_with_path(path, &x, PREFILL_ROWS, &mut y)
                        .unwrap()
                });
                format!(
                    "{:.1}",
                    2.0 * (rows * cols * PREFILL_ROWS) as f64 / seconds / 1e9
                )
            } else {
                "-".to_string()
            };
            println!(
                "{:<5} {name:<12} {:<10} {:>9.1} {:>7.2} {:>9.1} {:>7.2} {pf:>8}",
                ty.name(),
                path.name(),
                hot * 1e6,
                bytes as f64 / hot / 1e9,
                cold_s * 1e6,
                bytes as f64 / cold_s / 1e9,
            );
            cold.push((ty, shape, path, cold_s));
        }
    }
    println!();
    println!("Decode token estimate from the cold timings (the Q4_K_M file's matrices):");
    for &path in &paths {
        let mut total = 0.0;
        let mut bytes = 0usize;
        let mut complete = true;
        for (count, ty, shape) in TOKEN_MIX {
            let (_, rows, cols) = SHAPES[shape];
            match cold
                .iter()
                .find(|c| c.0 == ty && c.1 == shape && c.2 == path)
            {
                Some(c) => {
                    total += count as f64 * c.3;
                    bytes += count * rows * cols / ty.block_size() * ty.type_size();
                }
                None => complete = false,
            }
        }
        if complete {
            println!(
                "  {:<10} {:>7.2} ms/token ({:.1} tokens/s, {:.1} GB/s over {:.0} MB)",
                path.name(),
                total * 1e3,
                1.0 / total,
                bytes as f64 / total / 1e9,
                bytes as f64 / 1e6
            );
        } else {
            println!("  {:<10} incomplete (some cases filtered out)", path.name());
        }
    }
}
