//! Weights kept quantized in memory: a GGUF model whose every matrix is one ggml type runs with
//! qwen2-quant's integer kernels, against the f32 graph on the same weights dequantized at load.
//!
//! The models are written here from the tiny-chat GGUF's metadata and tokenizer, widened to
//! hidden 256 / intermediate 512 (so every k-quant's 256-value blocks fit), with seeded random
//! weights: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K and Q6_K quantized by qwen2-gguf's reference
//! quantizers (bit-exact with gguf-py / llama.cpp), Q2_K, Q3_K and Q5_K as random blocks with
//! valid scales (as the fixture generator makes them; we have no quantizer for those).
//!
//! Tolerance: the kernels quantize each activation block to 8 bits (Q8_0/Q8_1: 32 values,
//! Q8_K: 256) with scale `max|x| / 127`, so every activation moves by at most `max|x| / 254`
//! of its block, about 0.4%. One projection's output error is then ≤ 0.4% of `Σ|w|·max|x|`,
//! and the errors of the 7 projections of each of the 2 layers and the head add up through
//! the residual stream: measured max |Δlogit| is 0.06–1.1% of the largest logit across types
//! (printed); asserted ≤ `ACT_Q8_TOL` = 3% of it. Argmax must agree wherever the dense
//! model's top-2 margin exceeds twice the observed difference.
//!
//! Every kernel path this CPU has (portable, AVX2, AVX-512 VNNI) runs the same models in a
//! child process (`QWEN2_QUANT_PATH`); paths missing here are printed as skipped.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use qwen2_burn::core::model::{QuantTarget, WeightQuantization};
use qwen2_burn::core::{LogitsFor, Platform, PrecisionPlan, Qwen2Model};
use qwen2_burn::cpu::Cpu;
use qwen2_gguf::{GgmlType, GgufFile, GgufWriter, MetadataValue};
use qwen2_quant::KernelPath;

/// Largest |Δlogit| allowed, as a fraction of the largest |logit| (see the module docs).
const ACT_Q8_TOL: f32 = 0.03;

const HIDDEN: u64 = 256;
const FFN: u64 = 512;
const KV: u64 = 128;

/// A seeded xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[-a, a)`.
    fn uniform(&mut self, a: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
}

/// Random blocks of a k-quant with every f16 scale field set to `d` (a valid, small scale).
fn random_k_blocks(ty: GgmlType, n_blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let (offsets, d): (&[usize], f32) = match ty {
        GgmlType::Q2_K => (&[80, 82], 2e-3),
        GgmlType::Q3_K => (&[108], 5e-4),
        GgmlType::Q5_K => (&[0, 2], 1e-4),
        other => panic!("{other} is quantized, not random"),
    };
    let size = ty.type_size();
    let mut out: Vec<u8> = (0..n_blocks * size).map(|_| rng.next() as u8).collect();
    for block in out.chunks_mut(size) {
        for &o in offsets {
            block[o..o + 2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        }
    }
    out
}

/// `values` stored as `ty`.
fn encode(ty: GgmlType, values: &[f32], rng: &mut Rng) -> Vec<u8> {
    match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q5_K => {
            random_k_blocks(ty, values.len() / ty.block_size(), rng)
        }
        _ => qwen2_gguf::quantize(ty, values).unwrap(),
    }
}

/// The tiny-chat GGUF widened to hidden 256 / intermediate 512 with seeded random weights,
/// every matrix (the tied embedding too) stored as `ty`, written to `path`.
fn write_wide_model(ty: GgmlType, path: &Path) {
    let src = GgufFile::open(fixture_dir("gguf-tiny-chat").join("tiny-chat-bf16.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata().iter() {
        let v = match k {
            "qwen2.embedding_length" => MetadataValue::from(HIDDEN as u32),
            "qwen2.feed_forward_length" => MetadataValue::from(FFN as u32),
            _ => v.clone(),
        };
        w.add_metadata(k, v).unwrap();
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ty.id() as u64);
    for t in src.tensors() {
        let name = t.name();
        let dims: Vec<u64> = match name.rsplit_once('.').map(|(n, _)| n).unwrap_or(name) {
            "token_embd" => vec![HIDDEN, 320],
            n if n.ends_with("attn_q") || n.ends_with("attn_output") => vec![HIDDEN, HIDDEN],
            n if n.ends_with("attn_k") || n.ends_with("attn_v") => {
                if name.ends_with(".bias") {
                    vec![KV]
                } else {
                    vec![HIDDEN, KV]
                }
            }
            n if n.ends_with("ffn_gate") || n.ends_with("ffn_up") => vec![HIDDEN, FFN],
            n if n.ends_with("ffn_down") => vec![FFN, HIDDEN],
            _ => vec![HIDDEN],
        };
        let dims = if name.ends_with("attn_q.bias") {
            vec![HIDDEN]
        } else {
            dims
        };
        let n: usize = dims.iter().product::<u64>() as usize;
        if dims.len() == 1 {
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    if name.contains("norm") {
                        1.0 + rng.uniform(0.2)
                    } else {
                        rng.uniform(0.05)
                    }
                })
                .collect();
            w.add_tensor(
                name,
                GgmlType::F32,
                &dims,
                encode(GgmlType::F32, &values, &mut rng),
            )
            .unwrap();
        } else {
            let scale = if name == "token_embd.weight" {
                1.0
            } else {
                0.1
            };
            let values: Vec<f32> = (0..n).map(|_| rng.uniform(scale)).collect();
            w.add_tensor(name, ty, &dims, encode(ty, &values, &mut rng))
                .unwrap();
        }
    }
    w.write(path).unwrap();
}

const ALL_TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn load(path: &Path, quant: WeightQuantization) -> Qwen2Model<B> {
    Cpu::load_model_quantized(
        path,
        PrecisionPlan::F32,
        quant,
        &Cpu::devices().remove(0),
        &mut |_, _| {},
    )
    .unwrap()
}

fn all_logits(model: &Qwen2Model<B>, ids: &[u32]) -> Vec<f32> {
    let mut cache = model.new_cache(ids.len());
    to_f32(model.forward(ids, &mut cache, LogitsFor::All).unwrap())
}

fn prompt() -> Vec<u32> {
    (0..40u32).map(|i| (i * 37 + 11) % 320).collect()
}

/// Positions where `dense`'s argmax is clear by more than `margin` must have the same argmax
/// in `quant`; returns how many positions were compared.
fn argmax_agrees(dense: &[f32], quant: &[f32], vocab: usize, margin: f32) -> usize {
    let mut compared = 0;
    for (pos, (d, q)) in dense.chunks(vocab).zip(quant.chunks(vocab)).enumerate() {
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| d[b].total_cmp(&d[a]));
        if d[order[0]] - d[order[1]] <= margin {
            continue;
        }
        compared += 1;
        let top_q = (0..vocab).max_by(|&a, &b| q[a].total_cmp(&q[b])).unwrap();
        assert_eq!(top_q, order[0], "argmax at position {pos}");
    }
    compared
}

fn wide_model_path(dir: &Path, ty: GgmlType) -> PathBuf {
    let path = dir.join(format!("wide-{}.gguf", ty.name().to_ascii_lowercase()));
    write_wide_model(ty, &path);
    path
}

#[test]
fn every_type_runs_quantized_close_to_the_dequantized_f32_graph() {
    let tmp = tempfile::tempdir().unwrap();
    let ids = prompt();
    println!("kernel path: {}", qwen2_quant::best_path());
    for ty in ALL_TYPES {
        let path = wide_model_path(tmp.path(), ty);
        let dense = load(&path, WeightQuantization::Dense);
        let kept = load(&path, WeightQuantization::Stored);
        let name = ty.name().to_ascii_lowercase();
        let float = matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        assert_eq!(kept.is_quantized(), !float, "{name}");
        assert!(!dense.is_quantized());
        if !float {
            // 14 layer projections; the tied head is the embedding's blocks.
            assert_eq!(kept.weight_storage(), vec![(name.clone(), 15)]);
        }
        let d = all_logits(&dense, &ids);
        let q = all_logits(&kept, &ids);
        let peak = d.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = max_abs_diff(&d, &q);
        let compared = argmax_agrees(&d, &q, 320, 2.0 * err);
        println!(
            "{name:>5}: max |Δlogit| {err:.3e} = {:.2}% of max |logit| {peak:.3}; argmax equal at \
             {compared}/{} clear positions",
            100.0 * err / peak,
            ids.len()
        );
        if float {
            assert_eq!(d, q, "{name}: float types load dense either way");
        } else {
            assert!(err > 0.0, "{name}: the activations are quantized");
            assert!(err <= ACT_Q8_TOL * peak, "{name}: {err} vs {peak}");
        }
    }
}

#[test]
fn greedy_decoding_with_quantized_kernels_follows_the_dense_model() {
    // Greedy ids over 24 steps, on a Q4_K model: equal wherever the dense step's top-2 margin
    // is wider than the kernels' logit error.
    let tmp = tempfile::tempdir().unwrap();
    let path = wide_model_path(tmp.path(), GgmlType::Q4_K);
    let dense = load(&path, WeightQuantization::Dense);
    let kept = load(&path, WeightQuantization::Stored);
    let mut ids = prompt();
    let (mut cd, mut cq) = (dense.new_cache(80), kept.new_cache(80));
    let mut feed = ids.clone();
    let mut same = 0;
    for step in 0..24 {
        let d = to_f32(dense.forward(&feed, &mut cd, LogitsFor::Last).unwrap());
        let q = to_f32(kept.forward(&feed, &mut cq, LogitsFor::Last).unwrap());
        let peak = d.iter().fold(0f32, |m, x| m.max(x.abs()));
        let bound = ACT_Q8_TOL * peak;
        let mut order: Vec<usize> = (0..320).collect();
        order.sort_by(|&a, &b| d[b].total_cmp(&d[a]));
        let top_q = (0..320).max_by(|&a, &b| q[a].total_cmp(&q[b])).unwrap();
        if d[order[0]] - d[order[1]] > 2.0 * bound {
            assert_eq!(top_q, order[0], "step {step}");
        }
        same += usize::from(top_q == order[0]);
        // Both continue with the dense model's id, so the sequences stay comparable.
        feed = vec![order[0] as u32];
        ids.push(order[0] as u32);
    }
    println!("greedy: quantized argmax equal to dense at {same}/24 steps");
    assert!(same >= 20, "{same}/24");
}

#[test]
fn quantize_at_load_keeps_embeddings_and_follows_llama_cpp_types() {
    let tmp = tempfile::tempdir().unwrap();
    let wide = wide_model_path(tmp.path(), GgmlType::F32);
    let ids = prompt();
    let dense = load(&wide, WeightQuantization::Dense);
    let d = all_logits(&dense, &ids);
    let peak = d.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (target, storage) in [
        (QuantTarget::Q8_0, vec![("q8_0", 15)]),
        (QuantTarget::Q4_0, vec![("q4_0", 14), ("q6_k", 1)]),
        (QuantTarget::Q4K, vec![("q4_k", 14), ("q6_k", 1)]),
        (QuantTarget::Q6K, vec![("q6_k", 15)]),
    ] {
        let model = load(&wide, WeightQuantization::To(target));
        let storage: Vec<(String, usize)> =
            storage.iter().map(|(n, c)| (n.to_string(), *c)).collect();
        assert_eq!(model.weight_storage(), storage, "{target}");
        // The embedding lookup stays dense f32; the tied head is a quantized copy.
        assert!(model.embed_tokens.dense().is_some());
        let q = all_logits(&model, &ids);
        let err = max_abs_diff(&d, &q);
        println!(
            "--quantize {target}: max |Δlogit| {err:.3e} ({:.2}% of {peak:.3})",
            100.0 * err / peak
        );
        // Weight rounding on top of the activations' 8 bits: per-tensor relative error is
        // ~0.4% for Q8_0, ~1.3% for Q6_K and ~5.5% for the 4-bit types (`qwen2 quantize`'s
        // report); measured 0.9%, 1.8%, 5.5–6.5% of the largest logit.
        let tol = match target {
            QuantTarget::Q8_0 => 0.03,
            QuantTarget::Q6K => 0.04,
            _ => 0.12,
        };
        assert!(err <= tol * peak, "{target}: {err} vs {peak}");
    }

    // tiny-chat (hidden 64): rows are not whole 256-blocks, so Q4_K falls back to Q5_0 and
    // the Q6_K head to Q8_0, as llama.cpp does; a Q8_0 head fits 32-blocks.
    let tiny = fixture_dir("tiny-chat");
    let model = load(&tiny, WeightQuantization::To(QuantTarget::Q4K));
    assert_eq!(
        model.weight_storage(),
        vec![("q5_0".to_string(), 14), ("q8_0".to_string(), 1)]
    );
}

/// Set in the child process of [`every_kernel_path_gives_the_same_logits`].
const CHILD_MODEL: &str = "QWEN2_TEST_QUANT_MODEL";
const CHILD_OUT: &str = "QWEN2_TEST_QUANT_LOGITS";

#[test]
fn every_kernel_path_gives_the_same_logits() {
    if let (Ok(model), Ok(out)) = (std::env::var(CHILD_MODEL), std::env::var(CHILD_OUT)) {
        // The child: logits of the model with the path the parent forced.
        let logits = all_logits(
            &load(Path::new(&model), WeightQuantization::Stored),
            &prompt(),
        );
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(out, bytes).unwrap();
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // A child run: `path` with integer prefill forced, or (None) the default route.
    let child = |model: &Path, path: Option<KernelPath>| -> Vec<f32> {
        let out = tmp.path().join("child.bin");
        let mut cmd = std::process::Command::new(&exe);
        cmd.args([
            "every_kernel_path_gives_the_same_logits",
            "--exact",
            "--quiet",
        ])
        .stdout(std::process::Stdio::null())
        .env(CHILD_MODEL, model)
        .env(CHILD_OUT, &out);
        if let Some(path) = path {
            cmd.env(qwen2_quant::PATH_ENV_VAR, path.name())
                .env("QWEN2_QUANT_INTEGER_PREFILL", "1");
        }
        assert!(cmd.status().unwrap().success(), "{path:?}");
        std::fs::read(&out)
            .unwrap()
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    // One weight type per activation format: Q8_0 (Q8_0), Q5_1 (Q8_1), Q4_K (Q8_K).
    for ty in [GgmlType::Q8_0, GgmlType::Q5_1, GgmlType::Q4_K] {
        let model = wide_model_path(tmp.path(), ty);
        let dense = all_logits(&load(&model, WeightQuantization::Dense), &prompt());
        let dense_peak = dense.iter().fold(0f32, |m, x| m.max(x.abs()));
        let mut runs: Vec<(KernelPath, Vec<f32>)> = Vec::new();
        for path in KernelPath::ALL {
            if let Some(missing) = path.missing_features() {
                println!("skipped {path}: {missing}");
                continue;
            }
            let logits = child(&model, Some(path));
            let err = max_abs_diff(&dense, &logits);
            assert!(
                err <= ACT_Q8_TOL * dense_peak,
                "{ty} {path} vs dense: {err}"
            );
            runs.push((path, logits));
        }
        // The default route: bf16 tiles for these 40 rows where the CPU has AVX512-BF16.
        let err = max_abs_diff(&dense, &child(&model, None));
        println!(
            "{ty}: default prefill route vs dense f32: max |Δlogit| {err:.3e} ({:.2}%)",
            100.0 * err / dense_peak
        );
        assert!(err <= ACT_Q8_TOL * dense_peak, "{ty} default route: {err}");
        let (first, reference) = &runs[0];
        let peak = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (path, logits) in &runs[1..] {
            // The integer dot products are exact on every path; only the order of the f32
            // scale products differs.
            let err = max_abs_diff(reference, logits);
            println!(
                "{ty}: {path} vs {first}: max |Δlogit| {err:.3e} ({:.1e} of {peak:.2})",
                err / peak
            );
            // Every projection agrees across paths to ~1e-6 (the qwen2-quant tests); through a
            // model, such a difference can flip an activation's 8-bit rounding, one step of
            // 1/128 of its block's max: measured 1e-7 of the peak logit for Q8_0/Q5_1 and
            // 0.6% for Q4_K (Q8_K's 256-value blocks).
            assert!(err <= 0.01 * peak, "{ty} {path}: {err}");
            assert_eq!(
                argmax_agrees(reference, logits, 320, 2.0 * err),
                40,
                "{ty} {path}"
            );
        }
    }
}
