//! The `qwen2` binary as a user runs it: outputs, the CLI contract, and errors without panics.

mod common;

use std::process::Output;

use common::{csv, facts, fixture, ids_of, qwen2, read_npy};

fn golden_logits(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture(name).join("goldens.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("logits_all")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn assert_clean_failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "should fail; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "no panic expected: {stderr}");
    assert!(stderr.contains("error"), "{stderr}");
    stderr
}

#[test]
fn logits_writes_last_and_all_positions_npy_matching_hf() {
    let name = "sharded-f16";
    let f = facts(name);
    let ids = ids_of(&f["prompt_ids"]);
    let golden = golden_logits(name);
    let tmp = tempfile::tempdir().unwrap();

    let last = tmp.path().join("last.npy");
    let out = qwen2(&[
        "logits",
        "--model",
        fixture(name).to_str().unwrap(),
        "--ids",
        &csv(&ids),
        "--backend",
        "cpu",
        "--precision",
        "f32",
        "--out",
        last.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (shape, values) = read_npy(&last);
    assert_eq!(shape, vec![320]);
    let want = &golden[(ids.len() - 1) * 320..];
    let err = values
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-4, "max |Δ| {err}");

    let all = tmp.path().join("all.npy");
    let out = qwen2(&[
        "logits",
        "--model",
        fixture(name).to_str().unwrap(),
        "--ids",
        &csv(&ids),
        "--out",
        all.to_str().unwrap(),
        "--all-positions",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (shape, values) = read_npy(&all);
    assert_eq!(shape, vec![ids.len(), 320]);
    let err = values
        .iter()
        .zip(&golden)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-4, "max |Δ| {err}");
}

#[test]
fn generate_json_reports_greedy_ids_and_speed() {
    let name = "untied-bf16-mqa";
    let f = facts(name);
    let ids = ids_of(&f["prompt_ids"]);
    let greedy = ids_of(&f["greedy_ids"]);
    let out = qwen2(&[
        "generate",
        "--model",
        fixture(name).to_str().unwrap(),
        "--ids",
        &csv(&ids),
        "--max-new-tokens",
        &greedy.len().to_string(),
        "--temperature",
        "0",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(ids_of(&v["ids"]), greedy);
    assert_eq!(v["prompt_tokens"], ids.len());
    assert_eq!(v["generated_tokens"], greedy.len());
    assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn generate_text_mode_streams_ids() {
    let out = qwen2(&[
        "generate",
        "--model",
        fixture("tied-f32-gqa").to_str().unwrap(),
        "--ids",
        "1,2,3",
        "--max-new-tokens",
        "4",
    ]);
    assert!(out.status.success());
    // Comma-separated, as `tokenize` prints ids and `--ids` takes them.
    let text = String::from_utf8_lossy(&out.stdout);
    let ids: Vec<u32> = text.trim().split(',').map(|x| x.parse().unwrap()).collect();
    assert_eq!(ids.len(), 4, "{text}");
    let backend = qwen2(&[
        "generate",
        "--model",
        fixture("tied-f32-gqa").to_str().unwrap(),
        "--ids",
        "1",
        "--backend",
        "cuda",
    ]);
    let stderr = String::from_utf8_lossy(&backend.stderr);
    if !cfg!(feature = "cuda") {
        assert!(stderr.contains("--features cuda"), "{stderr}");
    }
}

#[test]
fn errors_are_messages_not_panics() {
    let model = fixture("tied-f32-gqa");
    let model = model.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let npy = tmp.path().join("x.npy");
    let npy = npy.to_str().unwrap();

    let e = assert_clean_failure(&qwen2(&[
        "logits",
        "--model",
        "/nonexistent/model",
        "--ids",
        "1",
        "--out",
        npy,
    ]));
    assert!(
        e.contains("--model /nonexistent/model: no such directory"),
        "{e}"
    );

    let e = assert_clean_failure(&qwen2(&[
        "logits", "--model", model, "--ids", "1,999", "--out", npy,
    ]));
    assert!(e.contains("token id 999"), "{e}");

    let e = assert_clean_failure(&qwen2(&[
        "logits",
        "--model",
        model,
        "--ids",
        "1",
        "--precision",
        "f8",
        "--out",
        npy,
    ]));
    assert!(
        e.contains("unknown precision policy `f8`") && e.contains("f32"),
        "{e}"
    );

    let e = assert_clean_failure(&qwen2(&[
        "logits",
        "--model",
        model,
        "--ids",
        "1",
        "--backend",
        "tpu",
        "--out",
        npy,
    ]));
    assert!(e.contains("tpu") && e.contains("cpu"), "{e}");

    let e = assert_clean_failure(&qwen2(&[
        "generate",
        "--model",
        model,
        "--ids",
        "1",
        "--temperature=-1",
    ]));
    assert!(e.contains("temperature"), "{e}");

    let e = assert_clean_failure(&qwen2(&[
        "logits",
        "--model",
        model,
        "--ids",
        "1",
        "--out",
        "/nonexistent/dir/x.npy",
    ]));
    assert!(e.contains("/nonexistent/dir/x.npy"), "{e}");

    let e = assert_clean_failure(&qwen2(&[
        "logits", "--model", model, "--ids", "a,b", "--out", npy,
    ]));
    assert!(e.contains("--ids"), "{e}");
}

#[test]
fn help_names_the_contract_flags() {
    let out = qwen2(&["logits", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--model",
        "--ids",
        "--backend",
        "--precision",
        "--out",
        "--all-positions",
    ] {
        assert!(help.contains(flag), "logits --help lacks {flag}");
    }
    let out = qwen2(&["generate", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--max-new-tokens", "--temperature", "--json", "--seed"] {
        assert!(help.contains(flag), "generate --help lacks {flag}");
    }
}

#[test]
fn naive_f16_on_massive_activations_exits_3_naming_down_proj() {
    let ids = csv(&ids_of(&facts("massive-1e5")["prompt_ids"]));
    let model = fixture("massive-1e5");
    let out = qwen2(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--ids",
        &ids,
        "--precision",
        "f16",
        "--max-new-tokens",
        "4",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model.layers.0.mlp.down_proj") && stderr.contains("f16"),
        "{stderr}"
    );
    assert!(
        out.stdout.iter().all(|b| b.is_ascii_whitespace()),
        "no token printed"
    );

    let tmp = tempfile::tempdir().unwrap();
    let npy = tmp.path().join("l.npy");
    let out = qwen2(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--ids",
        &ids,
        "--precision",
        "f16",
        "--out",
        npy.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(!npy.exists(), "no garbage logits written");
}

#[test]
fn fallback_reports_the_plan_it_used() {
    let f = facts("massive-1e5");
    let ids = csv(&ids_of(&f["prompt_ids"]));
    let greedy = ids_of(&f["greedy_ids"]);
    let out = qwen2(&[
        "generate",
        "--model",
        fixture("massive-1e5").to_str().unwrap(),
        "--ids",
        &ids,
        "--precision",
        "f16",
        "--on-nonfinite",
        "fallback",
        "--max-new-tokens",
        &greedy.len().to_string(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["precision"], "f16-safe");
    assert_eq!(v["requested_precision"], "f16");
    assert_eq!(v["fallbacks"][0]["precision"], "f16");
    assert!(v["fallbacks"][0]["error"]
        .as_str()
        .unwrap()
        .contains("model.layers.0.mlp.down_proj"));
    assert_eq!(ids_of(&v["ids"]), greedy);
    assert!(String::from_utf8_lossy(&out.stderr).contains("fell back to --precision f16-safe"));

    let out = qwen2(&[
        "generate",
        "--model",
        fixture("massive-1e5").to_str().unwrap(),
        "--ids",
        &ids,
        "--precision",
        "auto",
        "--max-new-tokens",
        "2",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["precision"], "bf16",
        "the CPU table follows the checkpoint's bf16 weights"
    );
}

#[test]
fn diagnose_reports_every_policy_and_draws_the_chart() {
    let ids = csv(&ids_of(&facts("massive-1e5")["prompt_ids"]));
    let tmp = tempfile::tempdir().unwrap();
    let svg = tmp.path().join("peaks.svg");
    let out = qwen2(&[
        "diagnose",
        "--model",
        fixture("massive-1e5").to_str().unwrap(),
        "--ids",
        &ids,
        "--json",
        "--chart",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    let run = |p: &str| runs.iter().find(|r| r["precision"] == p).unwrap().clone();
    assert_eq!(runs.len(), 4);
    assert_eq!(run("f32")["finite"], true);
    assert_eq!(run("f16")["finite"], false);
    assert_eq!(
        run("f16")["first_nonfinite"]["site"],
        "model.layers.0.mlp.down_proj"
    );
    for p in ["bf16", "f16-safe"] {
        assert_eq!(run(p)["finite"], true);
        assert_eq!(run(p)["top1_agreement"], 1.0, "{p}");
        assert!(run(p)["kl_divergence"].as_f64().unwrap() < 1e-3, "{p}");
        assert!(run(p)["max_abs_dlogits"].as_f64().unwrap() < 0.5, "{p}");
    }
    let peaks = run("f32")["layer_peaks"].as_array().unwrap().clone();
    assert!(peaks[0].as_f64().unwrap() > 65504.0);
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(
        chart.starts_with("<svg")
            && chart.contains("f16 max 65504")
            && chart.contains("f16 (non-finite")
    );

    let out = qwen2(&[
        "diagnose",
        "--model",
        fixture("massive-2e4").to_str().unwrap(),
        "--ids",
        &ids,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("its square does not"), "{text}");
}

#[test]
fn closed_pipes_bad_ids_missing_models_and_empty_rates_are_handled() {
    use std::process::{Command, Stdio};
    // A reader that goes away (`| head -c 0`): the process ends quietly, no panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen2"))
        .args([
            "generate",
            "--model",
            fixture("tied-f32-gqa").to_str().unwrap(),
        ])
        .args(["--ids", "1,2,3", "--max-new-tokens", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && out.status.code() != Some(101),
        "{stderr}"
    );

    // Spaces after commas; a non-number is a usage error (exit 2).
    let model = fixture("tied-f32-gqa");
    let model = model.to_str().unwrap();
    let spaced = qwen2(&[
        "generate",
        "--model",
        model,
        "--ids",
        "1, 2, 3",
        "--max-new-tokens",
        "2",
    ]);
    assert!(
        spaced.status.success(),
        "{}",
        String::from_utf8_lossy(&spaced.stderr)
    );
    let bad = qwen2(&[
        "generate",
        "--model",
        model,
        "--ids",
        "1,x",
        "--max-new-tokens",
        "2",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("'x' is not a token id"));

    // An eos id beyond the vocabulary is an error, not a silent no-op.
    let eos = qwen2(&[
        "generate",
        "--model",
        model,
        "--ids",
        "1",
        "--eos",
        "100000",
        "--max-new-tokens",
        "2",
    ]);
    let text = String::from_utf8_lossy(&eos.stderr);
    assert!(
        !eos.status.success()
            && text.contains("end-of-sequence id 100000 is outside the vocabulary (320 ids)"),
        "{text}"
    );

    // A missing model directory is named first, whatever the command needs from it.
    let missing = qwen2(&["run", "--model", "/no/such/dir", "--prompt", "hi"]);
    let text = String::from_utf8_lossy(&missing.stderr);
    assert!(
        text.contains("--model /no/such/dir: no such directory") && !text.contains("--ids"),
        "{text}"
    );
    let file = fixture("tied-f32-gqa/config.json");
    let as_file = qwen2(&["generate", "--model", file.to_str().unwrap(), "--ids", "1"]);
    assert!(String::from_utf8_lossy(&as_file.stderr).contains("is a file"));

    // No tokens generated: no rate over nothing.
    let none = qwen2(&[
        "generate",
        "--model",
        model,
        "--ids",
        "1,2",
        "--max-new-tokens",
        "0",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&none.stdout).unwrap();
    assert_eq!(
        (
            v["generated_tokens"].as_u64(),
            v["decode_tokens_per_s"].is_null()
        ),
        (Some(0), true),
        "{v}"
    );
}
