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
