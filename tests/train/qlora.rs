//! LoRA on a quantized base (`FinetuneOptions::quantize`, `qwen2 finetune --quantize`): the
//! base's projections held in ggml blocks, the forward on the quantized kernels and the input
//! gradient through them (`qwen2_cpu::train`'s quantized op), f32 adapters.
//!
//! Bounds against the same step on the dense base (the train fixture's LoRA step 0, a tiny
//! random model whose 64-wide rows quantize coarsely): the loss within 1e-3 relative for q8_0
//! (measured 3.5e-4) and 5e-3 for the 4-bit types (q4_0 2.3e-3, q4_k 7.2e-4); every adapter
//! gradient finite and within 1e-1 (q8_0, measured 4.8e-2) or 1.0 (4-bit, measured 0.45–0.55)
//! of the dense run's largest value in that tensor. The input gradient through the blocks is
//! checked exactly against the dequantized product in `qwen2_cpu::train`'s unit tests.

use crate::common;

use common::train_options as options;
use qwen2_burn::core::model::QuantTarget;
use qwen2_burn::core::Platform;
use qwen2_burn::cpu::Cpu;
use qwen2_burn::train::{Autodiff, TrainPrecision, Trainer};

type T = Autodiff<common::B>;

fn step0(quantize: Option<QuantTarget>) -> (f64, Vec<Vec<f32>>) {
    let out = tempfile::tempdir().unwrap();
    let mut o = options("lora", TrainPrecision::F32, out.path());
    o.quantize = quantize;
    let mut t = Trainer::<T>::new(o, &Default::default())
        .unwrap()
        .with_kernels(Cpu::training_kernels());
    assert_eq!(t.model().is_quantized(), quantize.is_some());
    let (loss, grads) = t.gradients().unwrap();
    let grads = grads
        .into_iter()
        .map(|g| g.unwrap().into_data().to_vec::<f32>().unwrap())
        .collect();
    (loss, grads)
}

#[test]
fn qlora_step0_is_within_quantization_error_of_the_dense_base() {
    let (loss, dense) = step0(None);
    for (q, loss_bound, grad_bound) in [
        (QuantTarget::Q8_0, 1e-3, 1e-1),
        (QuantTarget::Q4_0, 5e-3, 1.0),
        (QuantTarget::Q4K, 5e-3, 1.0),
    ] {
        let (l, grads) = step0(Some(q));
        let r = (l - loss).abs() / loss;
        assert!(r < loss_bound, "{q}: loss {l} vs dense {loss} ({r:.1e})");
        let mut worst = 0f64;
        for (i, (a, b)) in grads.iter().zip(&dense).enumerate() {
            assert!(
                a.iter().all(|v| v.is_finite()),
                "{q}: tensor {i} not finite"
            );
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12) as f64;
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) as f64;
            worst = worst.max(diff / scale);
        }
        assert!(
            worst < grad_bound,
            "{q}: adapter gradients differ by {worst:.2e}"
        );
        eprintln!("{q}: loss {l:.6} vs dense {loss:.6} ({r:.1e}); worst gradient {worst:.1e}");
    }
}

#[test]
fn qlora_trains_and_the_base_stays_quantized() {
    let out = tempfile::tempdir().unwrap();
    let mut o = options("lora", TrainPrecision::F32, out.path());
    o.quantize = Some(QuantTarget::Q8_0);
    let mut t = Trainer::<T>::new(o, &Default::default())
        .unwrap()
        .with_kernels(Cpu::training_kernels());
    let losses: Vec<f64> = (0..t.total_steps())
        .map(|_| t.step().unwrap().loss)
        .collect();
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(
        losses[losses.len() - 1] < 0.5 * losses[0],
        "the loss falls: {losses:?}"
    );
    assert!(t.model().is_quantized());
}

#[test]
fn qlora_needs_lora_and_kernels_that_differentiate_quantized_products() {
    let out = tempfile::tempdir().unwrap();
    let mut o = options("full", TrainPrecision::F32, out.path());
    o.quantize = Some(QuantTarget::Q8_0);
    let err = Trainer::<T>::new(o, &Default::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("--quantize") && err.contains("--lora"),
        "{err}"
    );

    let mut o = options("lora", TrainPrecision::F32, out.path());
    o.quantize = Some(QuantTarget::Q8_0);
    // The generic graph cannot differentiate the host's quantized product: refused before a
    // step runs, not trained wrong.
    let mut t = Trainer::<T>::new(o, &Default::default()).unwrap();
    let err = match t.step() {
        Ok(_) => panic!("a quantized base trained without kernels that differentiate it"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("--quantize") && err.contains("gradients"),
        "{err}"
    );
}

/// LoRA straight from a GGUF file: its quantized weights stay as stored, and the first step's
/// loss is the dense HF model's within 5e-3 relative (measured 1.2e-3: the file quantizes the
/// embedding too).
#[test]
fn lora_from_a_gguf_file_keeps_its_blocks_and_matches_the_dense_model() {
    use qwen2_burn::train::{FinetuneOptions, Length, LoraOptions};
    let step0 = |model: std::path::PathBuf| {
        let out = tempfile::tempdir().unwrap();
        let mut o = FinetuneOptions::new(
            model,
            common::fixture_dir("train").join("chat.jsonl"),
            out.path(),
        );
        o.lora = Some(LoraOptions {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: ["q_proj", "v_proj", "down_proj"].map(String::from).to_vec(),
        });
        o.batch_size = 6;
        o.length = Length::Steps(1);
        let mut t = Trainer::<T>::new(o, &Default::default())
            .unwrap()
            .with_kernels(Cpu::training_kernels());
        let quantized = t.model().is_quantized();
        (t.gradients().unwrap().0, quantized)
    };
    let (dense, q) = step0(common::fixture_dir("tiny-chat"));
    assert!(!q);
    let (gguf, q) = step0(common::fixture_dir("gguf-tiny-chat").join("tiny-chat-q8_0.gguf"));
    assert!(q, "the GGUF's q8_0 blocks stay quantized");
    let r = (gguf - dense).abs() / dense;
    assert!(r < 5e-3, "GGUF q8_0 loss {gguf} vs dense {dense} ({r:.1e})");
}
