//! `--model` with a GGUF file (tests/fixtures/gguf-tiny-chat, converted from tiny-chat by
//! scripts/make_gguf_model_fixture.py): the same output as the Hugging Face directory.

mod common;

use common::{fixture, qwen2};

fn stdout_json(args: &[&str]) -> serde_json::Value {
    let out = qwen2(args);
    assert!(
        out.status.success(),
        "qwen2 {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn run_on_a_gguf_file_gives_the_text_of_the_hf_directory() {
    let gguf = fixture("gguf-tiny-chat/tiny-chat-bf16.gguf");
    let hf = fixture("tiny-chat");
    // The GGUF holds no generation_config.json defaults: set every sampling option, so both
    // runs sample the same way (greedy, then seeded sampling over identical logits).
    let sampling: [&[&str]; 2] = [
        &["--temperature", "0", "--repetition-penalty", "1"],
        &[
            "--temperature",
            "1",
            "--seed",
            "7",
            "--top-k",
            "0",
            "--top-p",
            "1",
            "--min-p",
            "0",
            "--repetition-penalty",
            "1",
        ],
    ];
    for s in sampling {
        let run = |model: &std::path::Path| {
            let mut args = vec![
                "run",
                "--model",
                model.to_str().unwrap(),
                "--precision",
                "f32",
            ];
            args.extend([
                "-n",
                "8",
                "--json",
                "--prompt",
                "What is the capital of France?",
            ]);
            args.extend(s);
            stdout_json(&args)
        };
        let (a, b) = (run(&gguf), run(&hf));
        assert_eq!(a["text"], b["text"], "{s:?}");
        assert_eq!(a["ids"], b["ids"], "{s:?}");
        assert_eq!(a["prompt_tokens"], b["prompt_tokens"], "{s:?}");
    }

    // tokenize reads the GGUF's tokenizer; a non-first shard stands for its split set.
    let shard = fixture("gguf-tiny-chat/split/tiny-chat-q8_0-00002-of-00002.gguf");
    for model in [&gguf, &shard, &hf] {
        let ids = stdout_json(&[
            "tokenize",
            "--model",
            model.to_str().unwrap(),
            "--text",
            "<|im_start|>user 你好!",
            "--json",
        ]);
        assert_eq!(
            ids["ids"],
            serde_json::json!([1, 87, 85, 265, 223, 163, 124, 257, 164, 101, 124, 3])
        );
    }

    // A directory with two GGUF models is refused, naming both.
    let out = qwen2(&[
        "run",
        "--model",
        fixture("gguf-tiny-chat").to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("several GGUF models"),
        "{err}"
    );
    assert!(
        err.contains("tiny-chat-bf16.gguf") && err.contains("tiny-chat-q8_0.gguf"),
        "{err}"
    );
}

#[test]
fn quantize_writes_a_gguf_that_runs_like_the_converted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q8.gguf");
    let hf = fixture("tiny-chat");
    let report = stdout_json(&[
        "quantize",
        "--model",
        hf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--type",
        "q8_0",
        "--json",
    ]);
    let tensors = report["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 26);
    for t in tensors {
        let ty = t["ggml_type"].as_str().unwrap();
        let err = t["rel_error"].as_f64().unwrap();
        assert!(ty == "F32" || (ty == "Q8_0" && err < 0.01), "{t}");
    }
    // Greedy text equals that of the gguf-py converted Q8_0 file (same tensor bytes).
    let run = |model: &std::path::Path| {
        stdout_json(&[
            "run",
            "--model",
            model.to_str().unwrap(),
            "--precision",
            "f32",
            "-n",
            "8",
            "--json",
            "--temperature",
            "0",
            "--prompt",
            "What is the capital of France?",
        ])
    };
    let converted = run(&fixture("gguf-tiny-chat/tiny-chat-q8_0.gguf"));
    assert_eq!(run(&out)["ids"], converted["ids"]);

    // The table names fallbacks; a bad type and an input file as output are refused.
    let table = qwen2(&[
        "quantize",
        "--model",
        hf.to_str().unwrap(),
        "--out",
        tmp.path().join("q4km.gguf").to_str().unwrap(),
        "--type",
        "q4_k_m",
    ]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{text}");
    assert!(
        text.contains("blk.1.attn_v.weight") && text.contains("fallback from Q6_K"),
        "{text}"
    );
    let bad = qwen2(&[
        "quantize",
        "--model",
        hf.to_str().unwrap(),
        "--out",
        "x.gguf",
        "--type",
        "q3_k",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("q4_k_m"));
    let cfg = hf.join("config.json");
    let clobber = qwen2(&[
        "quantize",
        "--model",
        hf.to_str().unwrap(),
        "--out",
        cfg.to_str().unwrap(),
        "--type",
        "q8_0",
    ]);
    assert!(!clobber.status.success());
    assert!(String::from_utf8_lossy(&clobber.stderr).contains("refusing to overwrite"));
}

#[test]
fn quantized_weights_are_kept_or_made_at_load_and_reported() {
    let q8 = fixture("gguf-tiny-chat/tiny-chat-q8_0.gguf");
    let hf = fixture("tiny-chat");
    let run = |model: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "run",
            "--model",
            model.to_str().unwrap(),
            "-n",
            "4",
            "--json",
            "--temperature",
            "0",
            "--prompt",
            "What is the capital of France?",
        ];
        args.extend(extra);
        stdout_json(&args)
    };
    // A GGUF's Q8_0 blocks stay quantized (14 layer projections and the tied head), under
    // the CPU's quantized rule; `--quantize none` dequantizes them at load.
    let kept = run(&q8, &[]);
    assert_eq!(kept["weights"], "q8_0 \u{d7}15");
    assert_eq!(kept["precision"], "f32");
    let dense = run(&q8, &["--quantize", "none"]);
    assert_eq!(dense["weights"], "dense f32");
    // A safetensors model quantized at load: rows of 64 are not whole 256-blocks, so q4_k
    // takes llama.cpp's fallbacks (Q5_0, and Q8_0 for the head).
    assert_eq!(
        run(&hf, &["--quantize", "q8_0"])["weights"],
        "q8_0 \u{d7}15"
    );
    assert_eq!(
        run(&hf, &["--quantize", "q4_k"])["weights"],
        "q5_0 \u{d7}14, q8_0 \u{d7}1"
    );
    // The stats line says so.
    let out = qwen2(&[
        "run",
        "--model",
        q8.to_str().unwrap(),
        "-n",
        "2",
        "--prompt",
        "Hi",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rule cpu-quantized, GGUF weights kept quantized"),
        "{stderr}"
    );
    // bench reports what a token reads as stored.
    let bench = |extra: &[&str]| {
        let mut args = vec!["bench", "--model", hf.to_str().unwrap()];
        args.extend(extra);
        args.extend(["--prompt-len", "8", "--gen", "2", "--reps", "1"]);
        stdout_json(&args)
    };
    let dense_bench = bench(&["--precision", "f32"]);
    let bench = bench(&["--quantize", "q8_0"]);
    assert_eq!(bench["weights"], "q8_0 \u{d7}15");
    let ratio = bench["weight_bytes_per_token"].as_f64().unwrap()
        / dense_bench["weight_bytes_per_token"].as_f64().unwrap();
    // Q8_0 stores 34 bytes per 32 weights against f32's 128.
    assert!((ratio - 34.0 / 128.0).abs() < 1e-9, "{ratio}");
    // A type we cannot quantize to is refused, naming the choices.
    let out = qwen2(&[
        "run",
        "--model",
        hf.to_str().unwrap(),
        "--quantize",
        "q5_k",
        "--prompt",
        "Hi",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("q8_0, q4_0, q4_k or q6_k, or none"),
        "{stderr}"
    );
}

#[test]
fn training_and_merging_a_gguf_say_what_they_need_and_adapters_run_on_it() {
    let q8 = fixture("gguf-tiny-chat/tiny-chat-q8_0.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let data = fixture("train/chat.jsonl");
    let adapter = fixture("train/chat-adapter");
    let q8s = q8.to_str().unwrap();
    for args in [
        vec![
            "finetune",
            "--model",
            q8s,
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "1",
        ],
        vec![
            "merge",
            "--model",
            q8s,
            "--adapter",
            adapter.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    ] {
        let res = qwen2(&args);
        assert!(!res.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert!(
            stderr.contains("GGUF model") && stderr.contains("Hugging Face checkpoint"),
            "{stderr}"
        );
        assert!(!out.exists(), "nothing written");
    }
    // A LoRA adapter runs on top of the quantized weights.
    let run = stdout_json(&[
        "run",
        "--model",
        q8s,
        "--adapter",
        adapter.to_str().unwrap(),
        "-n",
        "3",
        "--json",
        "--prompt",
        "Hi",
    ]);
    assert_eq!(run["weights"], "q8_0 \u{d7}15");
    assert_eq!(run["generated_tokens"], 3);
}

/// Quantized GGUF blocks copied into huge pages (the default where Linux offers them) and read
/// in place from the file mapping (`QWEN2_HUGE_PAGES=0`) give bit-identical logits, and
/// `doctor` says which one this system uses.
#[test]
fn huge_pages_or_the_mapping_give_the_same_logits() {
    let q8 = fixture("gguf-tiny-chat/tiny-chat-q8_0.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let logits = |huge: &str| {
        let out_path = tmp.path().join(format!("huge-{huge}.npy"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwen2"))
            .env("QWEN2_HUGE_PAGES", huge)
            .args([
                "logits",
                "--model",
                q8.to_str().unwrap(),
                "--ids",
                "1,2,3,4,5",
            ])
            .args(["--all-positions", "--out", out_path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(&out_path).unwrap()
    };
    assert_eq!(logits("1"), logits("0"));
    let doctor = |huge: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qwen2"))
            .env("QWEN2_HUGE_PAGES", huge)
            .args(["doctor", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["backends"][0]["devices"][0]["quantized_weights"]["huge_pages"].clone()
    };
    assert_eq!(doctor("0"), false);
    assert!(doctor("1").is_boolean());
}
