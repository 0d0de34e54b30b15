//! The run limits and reports of the CLI: `--max-new-tokens` past the context, `--ctx-size`,
//! and `qwen2 bench`'s summary.

mod common;

use common::{fixture, qwen2};

/// `--max-new-tokens` past the context is capped there with a warning, and the run says it
/// stopped at the limit; `--ctx-size` lowers that limit, and more than the model holds is an
/// error.
#[test]
fn max_new_tokens_past_the_context_is_capped_with_a_warning() {
    let model = fixture("tied-f32-gqa");
    let model = model.to_str().unwrap();
    let out = qwen2(&[
        "generate", "--model", model, "--ids", "1,2", "-n", "300", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: --max-new-tokens 300 capped to 255"),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["generated_tokens"], 255,
        "2 prompt + 255 = 257 positions, the last never fed"
    );
    assert_eq!(v["finish_reason"], "length");

    let out = qwen2(&[
        "generate",
        "--model",
        model,
        "--ids",
        "1,2",
        "-n",
        "100",
        "--ctx-size",
        "40",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["generated_tokens"], 39);
    assert_eq!(v["finish_reason"], "length");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("capped to 39"), "{stderr}");

    let out = qwen2(&[
        "generate",
        "--model",
        model,
        "--ids",
        "1",
        "--ctx-size",
        "1000",
    ]);
    assert_eq!(out.status.code(), Some(1), "a runtime error, not a panic");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("context size 1000") && e.contains("256"), "{e}");
}

/// `qwen2 bench` prints one JSON line on stdout and a summary a person reads on stderr.
#[test]
fn bench_prints_json_and_a_readable_summary() {
    let out = qwen2(&[
        "bench",
        "-m",
        fixture("tied-f32-gqa").to_str().unwrap(),
        "--reps",
        "1",
        "--gen",
        "4",
        "--prompt-len",
        "8",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["gen_tokens"], 4);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for want in [
        "cpu backend, f32 plan",
        "8-token prompt, 4 generated",
        "prefill",
        "decode",
        "peak memory",
    ] {
        assert!(stderr.contains(want), "{want:?} missing from:\n{stderr}");
    }
}
