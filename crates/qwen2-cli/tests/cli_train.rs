//! `qwen2 finetune`, `merge` and `--adapter` as a user runs them.

mod common;

use common::{fixture, qwen2, read_npy};

fn ok(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "failed: {stderr}");
    stderr
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn lora_finetune_logs_every_step_and_the_adapter_answers_through_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("adapter");
    let log = tmp.path().join("log.jsonl");
    let model = fixture("tiny-chat");
    let data = fixture("train/chat.jsonl");
    let stderr = ok(&qwen2(&[
        "finetune",
        "--model",
        path(&model),
        "--data",
        path(&data),
        "--out",
        path(&out),
        "--lora",
        "--lora-targets",
        "q,k,v,o,gate,up,down",
        "--batch-size",
        "6",
        "--epochs",
        "40",
        "--lr",
        "2e-2",
        "--json-log",
        path(&log),
        "--eval",
        path(&data),
        "--eval-every",
        "20",
    ]));
    assert!(
        stderr.contains("40 steps") && stderr.contains("adapter saved in"),
        "{stderr}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("loss").is_some()).collect();
    let evals: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.get("eval_loss").is_some())
        .collect();
    assert_eq!(steps.len(), 40);
    assert_eq!(evals.len(), 2, "at step 20 and at the end");
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s["step"], i + 1);
        for key in ["lr", "grad_norm", "tokens", "seconds"] {
            assert!(s[key].is_number(), "{key} in {s}");
        }
    }
    let (first, last) = (
        steps[0]["loss"].as_f64().unwrap(),
        steps[39]["loss"].as_f64().unwrap(),
    );
    assert!(first > 3.0 && last < 0.01, "loss {first} -> {last}");
    assert!(evals[1]["eval_loss"].as_f64().unwrap() < 0.01);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (config["peft_type"].as_str(), config["r"].as_u64()),
        (Some("LORA"), Some(8))
    );

    let reply = qwen2(&[
        "run",
        "--model",
        path(&model),
        "--adapter",
        path(&out),
        "--prompt",
        "What is two plus two?",
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    ok(&reply);
    let reply: serde_json::Value = serde_json::from_slice(&reply.stdout).unwrap();
    assert_eq!(reply["text"], "Four.");
}

/// The adapter in tests/fixtures/train/chat-adapter was trained by `qwen2 finetune`; HF peft's
/// logits with it were recorded by scripts/make_peft_interop_fixture.sh.
#[test]
fn peft_logits_equal_ours_with_the_adapter_and_with_the_merged_model() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("train/chat-adapter-peft-logits.json")).unwrap(),
    )
    .unwrap();
    let ids: Vec<String> = golden["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let ids = ids.join(",");
    let peft: Vec<f32> = golden["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("tiny-chat");
    let adapter = fixture("train/chat-adapter");
    let merged = tmp.path().join("merged");
    ok(&qwen2(&[
        "merge",
        "--model",
        path(&model),
        "--adapter",
        path(&adapter),
        "--out",
        path(&merged),
        "--save-dtype",
        "f32",
    ]));
    for (what, args) in [
        (
            "adapter",
            vec!["--model", path(&model), "--adapter", path(&adapter)],
        ),
        ("merged", vec!["--model", path(&merged)]),
    ] {
        let npy = tmp.path().join(format!("{what}.npy"));
        let mut cmd = vec![
            "logits",
            "--ids",
            &ids,
            "--all-positions",
            "--precision",
            "f32",
            "--out",
            path(&npy),
        ];
        cmd.extend(args);
        ok(&qwen2(&cmd));
        let (shape, ours) = read_npy(&npy);
        assert_eq!(shape, vec![10, 320]);
        let diff = ours
            .iter()
            .zip(&peft)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff < 1e-4, "{what}: max |ours - peft| = {diff}");
    }
}

#[test]
fn full_finetune_writes_a_model_directory_qwen2_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let stderr = ok(&qwen2(&[
        "finetune",
        "--model",
        path(&fixture("tied-f32-gqa")),
        "--data",
        path(&fixture("train/tokens.jsonl")),
        "--out",
        path(&out),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
    ]));
    assert!(stderr.contains("model saved in"), "{stderr}");
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let out_gen = qwen2(&[
        "generate",
        "--model",
        path(&out),
        "--ids",
        "1,2,3",
        "--max-new-tokens",
        "4",
        "--json",
    ]);
    ok(&out_gen);
}

/// `run` with `adapter` on `model` answers the trained question.
fn assert_answers_paris(model: &std::path::Path, adapter: &std::path::Path) {
    let answer = qwen2(&[
        "run",
        "--model",
        path(model),
        "--adapter",
        path(adapter),
        "--prompt",
        "What is the capital of France?",
        "--temperature",
        "0",
    ]);
    let text = String::from_utf8_lossy(&answer.stdout);
    assert!(text.contains("Paris."), "{text}");
}

/// LoRA on a q8_0 base (`--quantize`): trains on the quantized kernels, and the adapter answers
/// through `run` on the dense model; a full fine-tune of a quantized base is refused first.
#[test]
fn qlora_adapter_trained_on_a_quantized_base_answers_on_the_dense_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("adapter");
    let model = fixture("tiny-chat");
    let data = fixture("train/chat.jsonl");
    let base = [
        "finetune",
        "--model",
        path(&model),
        "--data",
        path(&data),
        "--out",
        path(&out),
        "--quantize",
        "q8_0",
        "--batch-size",
        "6",
        "--epochs",
        "40",
        "--lr",
        "2e-2",
    ];
    let refused = qwen2(&base);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--quantize") && stderr.contains("--lora"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written before the refusal");
    let stderr = ok(&qwen2(&[&base[..], &["--lora"]].concat()));
    assert!(stderr.contains("LoRA on a q8_0 base"), "{stderr}");
    assert_answers_paris(&model, &out);

    // Straight from a GGUF file: LoRA on its q8_0 blocks; a full fine-tune is refused.
    let gguf = fixture("gguf-tiny-chat/tiny-chat-q8_0.gguf");
    let out = tmp.path().join("gguf-adapter");
    let from_gguf = [
        "finetune",
        "--model",
        path(&gguf),
        "--data",
        path(&data),
        "--out",
        path(&out),
        "--batch-size",
        "6",
        "--epochs",
        "40",
        "--lr",
        "2e-2",
    ];
    let refused = qwen2(&from_gguf);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("GGUF") && stderr.contains("--lora"),
        "{stderr}"
    );
    let stderr = ok(&qwen2(&[&from_gguf[..], &["--lora"]].concat()));
    assert!(stderr.contains("quantized weights"), "{stderr}");
    assert_answers_paris(&model, &out);
}

#[test]
fn finetune_errors_are_clear_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let fail = qwen2(&[
        "finetune",
        "--model",
        path(&fixture("tiny-chat")),
        "--data",
        path(&fixture("train/chat.jsonl")),
        "--out",
        path(&out),
        "--lora",
        "--lora-targets",
        "q,attn",
    ]);
    let stderr = String::from_utf8_lossy(&fail.stderr);
    assert_eq!(fail.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--lora-targets")
            && stderr.contains("'attn'")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0), 0);
    let fail = qwen2(&[
        "logits",
        "--model",
        path(&fixture("tiny-chat")),
        "--adapter",
        path(tmp.path()),
        "--ids",
        "1",
        "--out",
        path(&tmp.path().join("x.npy")),
    ]);
    let stderr = String::from_utf8_lossy(&fail.stderr);
    assert!(stderr.contains("adapter_config.json"), "{stderr}");
}

#[test]
fn ctrl_c_saves_a_checkpoint_that_only_the_same_run_resumes() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("adapter");
    let log = tmp.path().join("log.jsonl");
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "finetune",
            "--model",
            path(&fixture("tiny-chat")),
            "--data",
            path(&fixture("train/chat.jsonl")),
            "--out",
            path(&out),
            "--lora",
            "--batch-size",
            "2",
            "--epochs",
            "2000",
            "--json-log",
            path(&log),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qwen2"))
        .args(args(&[]))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a few logged steps, then press Ctrl-C.
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 3 {
        assert!(start.elapsed().as_secs() < 120, "no steps logged");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: sends SIGINT to our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted after step") && stderr.contains("--resume"),
        "{stderr}"
    );
    let steps_done = std::fs::read_to_string(&log).unwrap().lines().count();
    let checkpoints: Vec<_> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .collect();
    assert_eq!(checkpoints.len(), 1, "{stderr}");
    assert!(!out.join("adapter_model.safetensors").exists());

    // Resume with fewer epochs than the interrupted run would be a different schedule: refused.
    let mut refused = args(&["--resume", path(&out)]);
    let n = refused.iter().position(|a| a == "2000").unwrap();
    refused[n] = "3".into();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_qwen2"))
        .args(&refused)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains("made by a different run") && text.contains("total_steps"),
        "{text}"
    );
    assert!(steps_done >= 3);
}

#[test]
fn f16_training_failures_exit_3_with_the_cause_and_the_remedies() {
    let tmp = tempfile::tempdir().unwrap();
    let facts = common::facts("massive-1e5");
    let data = tmp.path().join("massive.jsonl");
    let model = fixture("massive-1e5");
    std::fs::write(
        &data,
        serde_json::json!({ "input_ids": facts["prompt_ids"] }).to_string(),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "finetune",
            "--model",
            path(&model),
            "--data",
            path(&data),
            "--out",
            path(tmp.path()),
            "--steps",
            "5",
            "--batch-size",
            "1",
        ];
        args.extend(extra);
        qwen2(&args)
    };
    // Naive f16: the forward monitor names the op.
    let out = run(&["--precision", "f16"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("model.layers.0.mlp.down_proj") && stderr.contains("f16-scaled"),
        "{stderr}"
    );
    // A scale that can never fit: three skipped steps in a row stop the run.
    let out = run(&[
        "--precision",
        "f16-scaled",
        "--loss-scale-init",
        "1e30",
        "--max-skipped-steps",
        "3",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("3 steps in a row overflowed")
            && stderr.contains("lower --lr")
            && stderr.contains("--precision f32"),
        "{stderr}"
    );
}
