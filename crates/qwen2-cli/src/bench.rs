//! `qwen2 bench`: load time, prefill and decode speed, time to first token and peak memory of
//! one backend and precision policy (`cargo xtask bench` runs one process per configuration and
//! tabulates them).

use qwen2_burn::core::qwen2_quant::{huge_pages_wanted, QuantError, WeightArena, WeightBytes};
use std::time::Instant;

use burn::tensor::FloatDType;
use qwen2_burn::core::sampling::argmax;
use qwen2_burn::core::{LogitsFor, Platform, Policy};

use crate::args::BenchArgs;
use crate::model_setup::{load, loader, CliResult};

/// Median, min and max of samples.
fn stats(samples: &[f64]) -> serde_json::Value {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let median = if s.is_empty() {
        0.0
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    serde_json::json!({
        "median": median,
        "min": s.first().copied().unwrap_or(0.0),
        "max": s.last().copied().unwrap_or(0.0),
    })
}

/// A field of /proc/self/status in bytes (Linux), e.g. `VmHWM` (peak resident memory).
pub fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Read bandwidth with every core, in bytes per second: the best of two sums over a buffer
/// of 256 MiB, each core summing its own part. The buffer is in huge pages when the weights
/// are (`qwen2_quant::huge_pages_wanted`): the bound is what a read of memory laid out like
/// the weights reaches.
pub struct ReadProbe {
    data: WeightBytes,
}

impl ReadProbe {
    /// Allocates and fills the buffer.
    pub fn new() -> ReadProbe {
        let len = 256 << 20;
        let fill = |b: &mut [u8]| -> Result<(), QuantError> {
            for value in b.chunks_exact_mut(4) {
                value.copy_from_slice(&1.0f32.to_ne_bytes());
            }
            Ok(())
        };
        let huge = huge_pages_wanted()
            .then(|| WeightArena::for_sizes([len]).and_then(|arena| arena.store(len, fill)))
            .and_then(Result::ok);
        let data = huge.unwrap_or_else(|| {
            let mut bytes = vec![0u8; len];
            let _ = fill(&mut bytes);
            WeightBytes::from(bytes)
        });
        ReadProbe { data }
    }

    /// One measurement.
    pub fn measure(&self) -> f64 {
        // SAFETY: every bit pattern is an f32.
        let (_, values, _) = unsafe { self.data.as_slice().align_to::<f32>() };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let part = values.len().div_ceil(threads);
        let mut best = 0.0f64;
        for _ in 0..2 {
            let t = Instant::now();
            let total: f32 = std::thread::scope(|s| {
                let handles: Vec<_> = values
                    .chunks(part)
                    .map(|c| s.spawn(move || sum(c)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
            });
            std::hint::black_box(total);
            best = best.max((values.len() * 4) as f64 / t.elapsed().as_secs_f64());
        }
        best
    }
}

impl Default for ReadProbe {
    fn default() -> Self {
        ReadProbe::new()
    }
}

/// The sum of `c` in 16 independent lanes (a loop the compiler vectorizes).
fn sum(c: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for block in c.chunks_exact(16) {
        for l in 0..16 {
            acc[l] += block[l];
        }
    }
    acc.iter().sum::<f32>()
}

/// Copy bandwidth with every core in bytes per second (bytes read plus bytes written, the
/// STREAM convention): the best of three copies of 512 MiB.
pub fn copy_bandwidth() -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = 128 << 20; // 512 MiB of f32
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    let part = n.div_ceil(threads);
    let mut copy = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for (d, c) in dst.chunks_mut(part).zip(src.chunks(part)) {
                s.spawn(move || d.copy_from_slice(c));
            }
        });
        std::hint::black_box(&dst);
        copy = copy.max((2 * n * 4) as f64 / t.elapsed().as_secs_f64());
    }
    copy
}

/// The prompt: ids from `--ids FILE` (comma/space/newline separated), else a fixed spread
/// over the vocabulary.
fn prompt_ids(a: &BenchArgs, vocab: usize) -> CliResult<Vec<u32>> {
    if let Some(path) = &a.ids {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let ids: Result<Vec<u32>, _> = text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect();
        let ids = ids.map_err(|e| format!("{}: not a list of token ids: {e}", path.display()))?;
        if ids.is_empty() {
            return Err(format!("{}: no token ids", path.display()).into());
        }
        return Ok(ids);
    }
    Ok((0..a.prompt_len)
        .map(|i| ((i * 7919 + 13) % vocab.min(150_000)) as u32)
        .collect())
}

/// Logits `[1, vocab]` in any dtype, read back as f32.
fn host_logits<B: burn::prelude::Backend>(
    logits: burn::prelude::Tensor<B, 2>,
) -> CliResult<Vec<f32>> {
    Ok(logits
        .cast(FloatDType::F32)
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| format!("reading logits back: {e:?}"))?)
}

pub fn bench_cmd<P: Platform>(a: BenchArgs) -> CliResult {
    let loader = loader::<P>(&a.model)?;
    let device = loader.device().clone();
    let policy: Policy = loader.resolved().policy;
    let rss_before = proc_status_bytes("VmRSS:");
    let t = Instant::now();
    let model = load(&loader, policy)?;
    let load_s = t.elapsed().as_secs_f64();
    let prompt = prompt_ids(&a, model.config().vocab_size)?;
    let needed = prompt.len() + a.gen;
    if needed > model.context_length() {
        return Err(format!(
            "prompt + --gen = {needed} exceeds the context ({})",
            model.context_length()
        )
        .into());
    }
    let run = |gen: usize| -> CliResult<(f64, f64, f64)> {
        let mut cache = model.new_cache(needed);
        let t = Instant::now();
        let logits = model.forward(&prompt, &mut cache, LogitsFor::Last)?;
        let logits = host_logits(logits)?;
        let prefill = t.elapsed().as_secs_f64();
        let mut next = argmax(&logits);
        let ttft = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 1..gen {
            let logits = model.forward(&[next], &mut cache, LogitsFor::Last)?;
            let logits = host_logits(logits)?;
            next = argmax(&logits);
        }
        Ok((prefill, ttft, t.elapsed().as_secs_f64()))
    };
    run(a.gen.min(4))?; // warm-up
                        // Peak memory of the model run (every repetition runs the same), read before the
                        // bandwidth probes allocate their buffers.
    let peak_rss = proc_status_bytes("VmHWM:");
    // GPU backends: what the device allocator holds after a run (null on the CPU).
    let device_memory = P::device_memory(&device);
    // The read bandwidth is measured just before each repetition, so that the decode speed
    // and the bound it is compared with come from the same moments (on a shared host the
    // bandwidth swings by 2x within minutes).
    let probe = ReadProbe::new();
    let (mut prefill, mut ttft, mut decode) = (Vec::new(), Vec::new(), Vec::new());
    let mut read_bandwidth = Vec::new();
    for rep in 0..a.reps {
        read_bandwidth.push(probe.measure());
        let (p, f, d) = run(a.gen)?;
        tracing::info!(rep, prefill_s = p, decode_s = d, "bench rep");
        prefill.push(prompt.len() as f64 / p);
        ttft.push(f * 1e3);
        if a.gen > 1 {
            decode.push((a.gen - 1) as f64 / d);
        }
    }
    if read_bandwidth.is_empty() {
        read_bandwidth.push(probe.measure());
    }
    drop(probe);
    let read_bandwidth = stats(&read_bandwidth)["median"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let copy_bandwidth = copy_bandwidth();
    // What a token reads (every projection and the head once, as stored: dense or quantized),
    // and what is held (plus the embedding when the head is not the embedding itself).
    let weight_bytes = model.projection_bytes() as f64;
    let stored_bytes = model.stored_weight_bytes() as f64;
    let report = serde_json::json!({
        "backend": P::NAME,
        "precision": policy.name(),
        "weights": model.weight_storage_text(),
        "model": a.model.model.display().to_string(),
        "prompt_tokens": prompt.len(),
        "gen_tokens": a.gen,
        "reps": a.reps,
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "load_s": load_s,
        "prefill_tok_s": stats(&prefill),
        "ttft_ms": stats(&ttft),
        "decode_tok_s": stats(&decode),
        "peak_rss_bytes": peak_rss,
        "device_memory": device_memory,
        "rss_before_load_bytes": rss_before,
        "weight_bytes_per_token": weight_bytes,
        "weight_bytes_stored": stored_bytes,
        "peak_rss_over_weights": peak_rss.map(|p| p as f64 / stored_bytes),
        "read_bandwidth_bytes_s": read_bandwidth,
        "copy_bandwidth_bytes_s": copy_bandwidth,
        "decode_bound_tok_s": read_bandwidth / weight_bytes,
    });
    println!("{report}");
    eprintln!("{}", summary(&report));
    Ok(())
}

/// The JSON report as lines a person reads (stderr; the JSON line stays on stdout).
fn summary(r: &serde_json::Value) -> String {
    let med = |k: &str| r[k]["median"].as_f64().unwrap_or(f64::NAN);
    let range = |k: &str| {
        format!(
            "{:.1} (min {:.1}, max {:.1})",
            med(k),
            r[k]["min"].as_f64().unwrap_or(f64::NAN),
            r[k]["max"].as_f64().unwrap_or(f64::NAN)
        )
    };
    let mb = |k: &str| r[k].as_f64().map(|b| b / 1e6);
    let mut out = format!(
        "{} backend, {} plan, weights {}, {} threads: {}-token prompt, {} generated, {} \
         repetitions\n  \
         load            {:.2} s\n  prefill         {} tok/s\n  first token     {:.0} ms\n  \
         decode          {} tok/s (memory-bandwidth bound {:.1} tok/s)",
        r["backend"].as_str().unwrap_or("?"),
        r["precision"].as_str().unwrap_or("?"),
        r["weights"].as_str().unwrap_or("?"),
        r["threads"],
        r["prompt_tokens"],
        r["gen_tokens"],
        r["reps"],
        r["load_s"].as_f64().unwrap_or(f64::NAN),
        range("prefill_tok_s"),
        med("ttft_ms"),
        range("decode_tok_s"),
        r["decode_bound_tok_s"].as_f64().unwrap_or(f64::NAN),
    );
    if let (Some(peak), Some(ratio)) = (mb("peak_rss_bytes"), r["peak_rss_over_weights"].as_f64()) {
        out += &format!("\n  peak memory     {peak:.0} MB ({ratio:.2}x the weights)");
    }
    if let Some(reserved) = r["device_memory"]["bytes_reserved"].as_f64() {
        out += &format!("\n  device memory   {:.0} MB reserved", reserved / 1e6);
    }
    out
}
