//! Fine-tuning beyond the PyTorch parity: resume equals an uninterrupted run bit for bit,
//! LoRA leaves the base untouched, chat records are labelled on assistant turns only, a LoRA
//! run learns a small chat task, and bad input fails early with an error naming the cause.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use qwen2_burn::core::adapter::Adapter;
use qwen2_burn::core::burn::tensor::FloatDType;
use qwen2_burn::core::chat::{ChatOptions, ChatSession};
use qwen2_burn::core::generate::GenerateOptions;
use qwen2_burn::core::model::{WeightKind, WeightMut};
use qwen2_burn::core::text::{ChatTemplate, TextTokenizer};
use qwen2_burn::core::weights::Checkpoint;
use qwen2_burn::core::{Platform, PrecisionPlan};
use qwen2_burn::cpu::Cpu;
use qwen2_burn::train::data::{Dataset, TextPipeline, IGNORE};
use qwen2_burn::train::{
    Autodiff, Event, FinetuneOptions, Length, LoraOptions, TrainError, Trainer,
};

type T = Autodiff<common::B>;

fn train_file(name: &str) -> PathBuf {
    common::fixture_dir("train").join(name)
}

/// LoRA (or full) on the parity data: 8 records, batch 2, accumulation 2, 6 steps.
fn tokens_run(out: &Path, lora: bool) -> FinetuneOptions {
    let mut o = FinetuneOptions::new(
        common::fixture_dir("tied-f32-gqa"),
        train_file("tokens.jsonl"),
        out,
    );
    o.batch_size = 2;
    o.grad_accum = 2;
    o.length = Length::Steps(6);
    o.lr = if lora { 5e-3 } else { 1e-3 };
    o.warmup_steps = 2;
    o.shuffle = true;
    o.seed = 3;
    if lora {
        o.lora = Some(LoraOptions {
            dropout: 0.1,
            ..Default::default()
        });
    }
    o
}

fn quiet(_: Event<'_>) {}

fn resume_equals_uninterrupted(lora: bool, file: &str) {
    let straight = tempfile::tempdir().unwrap();
    let mut t = Trainer::<T>::new(tokens_run(straight.path(), lora), &Default::default()).unwrap();
    t.run(&AtomicBool::new(false), &mut quiet).unwrap();

    let split = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let mut t = Trainer::<T>::new(tokens_run(split.path(), lora), &Default::default()).unwrap();
    let err = t
        .run(&stop, &mut |e| {
            if let Event::Step(r) = e {
                if r.step == 3 {
                    stop.store(true, Ordering::SeqCst); // Ctrl-C after step 3
                }
            }
        })
        .unwrap_err();
    let TrainError::Interrupted {
        step: 3,
        checkpoint,
    } = err
    else {
        panic!("expected an interruption after step 3, got {err}");
    };
    assert!(checkpoint.join("trainer_state.json").is_file());
    assert!(
        !split.path().join(file).exists(),
        "no result before the run ends"
    );
    drop(t);
    let mut o = tokens_run(split.path(), lora);
    o.resume = Some(split.path().to_path_buf()); // the newest checkpoint under out/
    let mut t = Trainer::<T>::new(o, &Default::default()).unwrap();
    assert_eq!(t.steps_done(), 3);
    t.run(&AtomicBool::new(false), &mut quiet).unwrap();

    let a = std::fs::read(straight.path().join(file)).unwrap();
    let b = std::fs::read(split.path().join(file)).unwrap();
    assert!(
        a == b,
        "{file}: the resumed run's weights differ from the uninterrupted run's"
    );
}

#[test]
fn lora_resume_equals_an_uninterrupted_run_bit_for_bit() {
    resume_equals_uninterrupted(true, "adapter_model.safetensors");
}

#[test]
fn full_resume_equals_an_uninterrupted_run_bit_for_bit() {
    resume_equals_uninterrupted(false, "model.safetensors");
}

#[test]
fn lora_leaves_the_base_weights_bit_identical() {
    let out = tempfile::tempdir().unwrap();
    let mut t = Trainer::<T>::new(tokens_run(out.path(), true), &Default::default()).unwrap();
    t.run(&AtomicBool::new(false), &mut quiet).unwrap();
    let mut model = t.into_model();
    let base = Checkpoint::open(common::fixture_dir("tied-f32-gqa")).unwrap();
    let (mut checked, mut adapters) = (0, 0);
    model.visit_weights(&mut |name, kind, w| {
        if kind != WeightKind::Base {
            adapters += 1;
            return;
        }
        let ours = match w {
            WeightMut::Vector(t) => t.clone().into_data().to_vec::<f32>().unwrap(),
            WeightMut::Matrix(t) => t.clone().into_data().to_vec::<f32>().unwrap(),
        };
        let shape = base.shape(name).unwrap().to_vec();
        let file = base
            .load(name, &shape, FloatDType::F32, false)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        assert!(
            ours.iter()
                .zip(&file)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name} changed"
        );
        checked += 1;
    });
    assert_eq!((checked, adapters), (26, 28));
}

fn chat_pipeline_dataset(max_len: usize) -> Result<Dataset, TrainError> {
    let dir = common::fixture_dir("tiny-chat");
    let tokenizer = TextTokenizer::from_model_dir(&dir).unwrap();
    let template = ChatTemplate::from_model_dir(&dir).unwrap();
    let p = TextPipeline {
        tokenizer: &tokenizer,
        template: &template,
        end_of_turn: vec![tokenizer.token_id("<|im_end|>").unwrap()],
    };
    Dataset::load(&train_file("chat.jsonl"), Some(&p), max_len, 320)
}

#[test]
fn chat_records_carry_loss_on_the_assistant_reply_and_its_end_of_turn_only() {
    let data = chat_pipeline_dataset(1024).unwrap();
    let tokenizer = TextTokenizer::from_model_dir(common::fixture_dir("tiny-chat")).unwrap();
    let answers = ["Blue.", "Four.", "Paris.", "Hello!", "A cat.", "Down."];
    for (ex, answer) in data.examples.iter().zip(answers) {
        let labelled: Vec<u32> = ex
            .labels
            .iter()
            .filter(|&&l| l != IGNORE)
            .map(|&l| l as u32)
            .collect();
        assert_eq!(
            tokenizer.decode(&labelled, false).unwrap(),
            format!("{answer}<|im_end|>")
        );
        let first = ex.labels.iter().position(|&l| l != IGNORE).unwrap();
        assert!(
            ex.labels[first..first + labelled.len()]
                .iter()
                .all(|&l| l != IGNORE),
            "one contiguous span"
        );
    }
    assert_eq!(data.truncated, 0);
    // Cut before any reply (the template's default system prompt comes first): nothing to learn.
    let err = chat_pipeline_dataset(40).unwrap_err().to_string();
    assert!(err.contains("no record has a token to learn"), "{err}");
    // Pre-tokenized records of 5..24 tokens cut to 16: three of them.
    let cut = Dataset::load(&train_file("tokens.jsonl"), None, 16, 320).unwrap();
    assert_eq!(cut.truncated, 3);
    assert!(cut
        .examples
        .iter()
        .all(|e| e.input_ids.len() <= 16 && e.labels.len() == e.input_ids.len()));
}

#[test]
fn a_lora_run_learns_a_small_chat_task() {
    let out = tempfile::tempdir().unwrap();
    let dir = common::fixture_dir("tiny-chat");
    let mut o = FinetuneOptions::new(&dir, train_file("chat.jsonl"), out.path());
    o.lora = Some(LoraOptions::default());
    o.batch_size = 6;
    o.length = Length::Epochs(40);
    o.lr = 2e-2; // cosine to 0 over the 40 steps
    let mut t = Trainer::<T>::new(o, &Default::default()).unwrap();
    let mut losses = Vec::new();
    t.run(&AtomicBool::new(false), &mut |e| {
        if let Event::Step(r) = e {
            losses.push(r.loss);
        }
    })
    .unwrap();
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!(
        "chat task: loss {first:.3} -> {last:.4} in {} steps",
        losses.len()
    );
    assert!(first > 3.0 && last < 0.01, "loss {first} -> {last}");

    // The saved adapter, applied at load like `--adapter`, answers with the trained replies.
    let device = Cpu::devices().remove(0);
    let mut model = Cpu::load_model(&dir, PrecisionPlan::F32, &device, &mut |_, _| {}).unwrap();
    Adapter::open(out.path())
        .unwrap()
        .attach(&mut model, FloatDType::F32)
        .unwrap();
    let tokenizer = TextTokenizer::from_model_dir(&dir).unwrap();
    let template = ChatTemplate::from_model_dir(&dir).unwrap();
    let mut opts = ChatOptions {
        generate: GenerateOptions::greedy(8),
        stop_strings: vec![],
        template_vars: Default::default(),
        cancel: None,
    };
    opts.generate.eos_token_ids = vec![tokenizer.token_id("<|im_end|>").unwrap()];
    for (q, a) in [
        ("What color is the sky?", "Blue."),
        ("What is the capital of France?", "Paris."),
        ("Which animal purrs?", "A cat."),
    ] {
        let mut chat = ChatSession::new(&model, &tokenizer, &template, None);
        let turn = chat.send(q, &opts, |_| {}).unwrap();
        assert_eq!(turn.reply, a, "reply to {q:?}");
    }
}

fn expect_err(o: FinetuneOptions, needle: &str) {
    let out = o.out.clone();
    let err = match Trainer::<T>::new(o, &Default::default()) {
        Ok(_) => panic!("expected an error containing {needle:?}"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(needle),
        "error {err:?} should contain {needle:?}"
    );
    if out.is_dir() {
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        assert!(left.is_empty(), "nothing written on error, found {left:?}");
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_input_fails_before_training_and_names_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let chat = |data: PathBuf| {
        let mut o = FinetuneOptions::new(common::fixture_dir("tiny-chat"), data, &out);
        o.lora = Some(LoraOptions::default());
        o
    };
    let ok = r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#;
    let bad = write(
        tmp.path(),
        "bad.jsonl",
        &format!("{ok}\n{{\"messages\": [\n"),
    );
    expect_err(chat(bad.clone()), "bad.jsonl:2: not valid JSON");
    let role = write(
        tmp.path(),
        "role.jsonl",
        r#"{"messages": [{"role": "robot", "content": "beep"}]}"#,
    );
    expect_err(
        chat(role),
        "role.jsonl:1: message 0 has unknown role \"robot\"",
    );
    let empty = write(tmp.path(), "empty.jsonl", "\n\n");
    expect_err(chat(empty), "empty.jsonl: no records");
    let unlabelled = write(
        tmp.path(),
        "nolabel.jsonl",
        r#"{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}"#,
    );
    expect_err(chat(unlabelled), "no record has a token to learn");
    let far = write(tmp.path(), "far.jsonl", r#"{"input_ids": [1, 2, 999]}"#);
    expect_err(
        chat(far),
        "far.jsonl:1: token id 999 at position 2 is outside the vocabulary",
    );
    let good = write(tmp.path(), "good.jsonl", ok);

    let mut o = chat(good.clone());
    o.max_seq_len = Some(10_000);
    expect_err(
        o,
        "--max-seq-len: 10000 is longer than the model's context (256 positions)",
    );
    let mut o = chat(good.clone());
    o.lora.as_mut().unwrap().targets = vec!["qkv_proj".into()];
    expect_err(o, "unknown module 'qkv_proj'");
    let mut o = chat(good.clone());
    o.lora.as_mut().unwrap().targets = vec!["lm_head".into()];
    expect_err(o, "no 'lm_head' projection");

    // An adapter made for another base model (2 kv heads there, 1 here).
    let mut o = FinetuneOptions::new(
        common::fixture_dir("untied-bf16-mqa"),
        train_file("tokens.jsonl"),
        &out,
    );
    o.lora = Some(LoraOptions::default());
    o.init_adapter = Some(train_file("lora-init"));
    expect_err(o, "the adapter was made for another base model");

    // --out under a file cannot be created.
    let mut o = chat(good.clone());
    o.out = bad.join("out");
    expect_err(o, "bad.jsonl");
}

#[test]
fn resume_from_another_run_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let mut o = tokens_run(out.path(), true);
    o.length = Length::Steps(1);
    let mut t = Trainer::<T>::new(o, &Default::default()).unwrap();
    t.step().unwrap();
    let ckpt = t.save_checkpoint().unwrap();
    let mut o = tokens_run(out.path(), true);
    o.lr = 1e-4;
    o.resume = Some(ckpt.clone());
    let err = Trainer::<T>::new(o, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("made by a different run") && err.contains("lr"),
        "{err}"
    );
    let mut o = tokens_run(out.path(), true);
    o.resume = Some(out.path().join("nowhere"));
    let err = Trainer::<T>::new(o, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a checkpoint"), "{err}");
}
