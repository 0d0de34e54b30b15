//! `qwen2 doctor`: every compiled backend, its devices, what the probe saw, and the plan `auto`
//! picks with the rule and reason behind it.

use qwen2_burn::core::precision::{can_run, Choice, ModelFacts};
use qwen2_burn::core::{Platform, Policy};

use crate::model_setup::CliResult;

/// The report of one backend.
pub fn backend_report<P: Platform>() -> serde_json::Value {
    let devices = P::devices();
    let table = P::policy_table();
    let devices: Vec<serde_json::Value> = devices
        .iter()
        .map(|d| {
            let hw = P::probe(d);
            let auto = table.select(&hw, Choice::Auto);
            // Some tables follow the checkpoint's dtype: show the bf16 pick when it differs.
            let bf16 = ModelFacts {
                checkpoint_dtype: Some("bfloat16".into()),
                quantized_weights: false,
            };
            let auto_bf16 = table
                .select_for(&hw, &bf16, Choice::Auto)
                .ok()
                .filter(|b| auto.as_ref().map_or(true, |a| a.rule != b.rule));
            let quantized = ModelFacts {
                checkpoint_dtype: None,
                quantized_weights: true,
            };
            let auto_quantized = table
                .select_for(&hw, &quantized, Choice::Auto)
                .ok()
                .filter(|b| auto.as_ref().map_or(true, |a| a.rule != b.rule));
            let policies: serde_json::Map<String, serde_json::Value> = Policy::ALL
                .iter()
                .map(|p| {
                    let v = match can_run(&hw, *p) {
                        Ok(()) => serde_json::Value::from("runs"),
                        Err(why) => serde_json::Value::from(format!("refused: {why}")),
                    };
                    (p.name().to_string(), v)
                })
                .collect();
            serde_json::json!({
                "device": format!("{d:?}"),
                "hardware": hw.to_string(),
                "kind": format!("{:?}", hw.kind),
                "compute_capability": hw.compute_capability.map(|(a, b)| format!("{a}.{b}")),
                "features": hw.features,
                "auto": match auto {
                    Ok(r) => serde_json::json!({
                        "precision": r.policy.name(),
                        "rule": r.rule,
                        "reason": r.reason,
                        "fallbacks": r.fallbacks.iter().map(|p| p.name()).collect::<Vec<_>>(),
                    }),
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                },
                "auto_bf16_checkpoint": auto_bf16.map(|r| serde_json::json!({
                    "precision": r.policy.name(),
                    "rule": r.rule,
                    "reason": r.reason,
                })),
                "auto_quantized_weights": auto_quantized.map(|r| serde_json::json!({
                    "precision": r.policy.name(),
                    "rule": r.rule,
                    "reason": r.reason,
                })),
                "policies": policies,
                "quantized_weights": quantized_weights::<P>(),
                "training_auto": match table.select_training(&hw, None) {
                    Ok(r) => serde_json::json!({
                        "precision": r.policy.name(),
                        "rule": r.rule,
                        "reason": r.reason,
                    }),
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                },
            })
        })
        .collect();
    serde_json::json!({"backend": P::NAME, "devices": devices})
}

/// What the backend does with quantized (GGUF) weights: keeps them quantized with the CPU
/// kernel paths this machine runs, or dequantizes them at load.
fn quantized_weights<P: Platform>() -> serde_json::Value {
    use qwen2_burn::core::qwen2_quant::{best_path, KernelPath};
    if !P::multiplies_quantized() {
        return serde_json::json!({
            "kept": false,
            "note": "GGUF weights are dequantized at load into the plan's dtype; quantized GPU \
                     kernels are later work (--quantize needs --backend cpu)",
        });
    }
    let skipped: Vec<String> = KernelPath::ALL
        .iter()
        .filter_map(|p| p.missing_features().map(|m| format!("{p} ({m})")))
        .collect();
    serde_json::json!({
        "kept": true,
        "huge_pages": qwen2_burn::core::qwen2_quant::huge_pages_wanted(),
        "kernel_path": best_path().name(),
        "available": qwen2_burn::core::qwen2_quant::available_paths()
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>(),
        "unavailable": skipped,
    })
}

pub fn print(reports: &[serde_json::Value], json: bool) -> CliResult {
    if json {
        println!("{}", serde_json::json!({"backends": reports}));
        return Ok(());
    }
    for r in reports {
        if r["compiled"] == false {
            println!(
                "backend {}: not compiled into this binary (build with: {})",
                r["backend"].as_str().unwrap_or("?"),
                r["how"].as_str().unwrap_or("?")
            );
            continue;
        }
        println!("backend {}", r["backend"].as_str().unwrap_or("?"));
        let devices = r["devices"].as_array().cloned().unwrap_or_default();
        if devices.is_empty() {
            println!("  no device on this machine");
        }
        for d in devices {
            println!(
                "  device {}: {}",
                d["device"].as_str().unwrap_or("?"),
                d["hardware"].as_str().unwrap_or("?")
            );
            let auto = &d["auto"];
            match auto["precision"].as_str() {
                Some(p) => {
                    let which = if d["auto_bf16_checkpoint"].is_null() {
                        ""
                    } else {
                        "; weights stored in f32 or f16"
                    };
                    println!(
                        "    auto -> {p} (rule {}{which})",
                        auto["rule"].as_str().unwrap_or("-")
                    );
                    println!("    why: {}", auto["reason"].as_str().unwrap_or(""));
                    let fallbacks: Vec<&str> = auto["fallbacks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str())
                        .collect();
                    println!(
                        "    on inf/NaN falls back to: {}",
                        if fallbacks.is_empty() {
                            "nothing (already the safest)".into()
                        } else {
                            fallbacks.join(" -> ")
                        }
                    );
                }
                None => println!(
                    "    auto -> error: {}",
                    auto["error"].as_str().unwrap_or("?")
                ),
            }
            let b = &d["auto_bf16_checkpoint"];
            if let Some(p) = b["precision"].as_str() {
                println!(
                    "    auto with a bf16 checkpoint -> {p} (rule {}): {}",
                    b["rule"].as_str().unwrap_or("-"),
                    b["reason"].as_str().unwrap_or("")
                );
            }
            let b = &d["auto_quantized_weights"];
            if let Some(p) = b["precision"].as_str() {
                println!(
                    "    auto with quantized weights -> {p} (rule {}): {}",
                    b["rule"].as_str().unwrap_or("-"),
                    b["reason"].as_str().unwrap_or("")
                );
            }
            let train = &d["training_auto"];
            match train["precision"].as_str() {
                Some(p) => println!(
                    "    finetune auto -> {p} (rule {}): {}",
                    train["rule"].as_str().unwrap_or("-"),
                    train["reason"].as_str().unwrap_or("")
                ),
                None => println!(
                    "    finetune auto -> error: {}",
                    train["error"].as_str().unwrap_or("?")
                ),
            }
            let q = &d["quantized_weights"];
            if q["kept"] == true {
                let others: Vec<&str> = q["available"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .filter(|p| Some(*p) != q["kernel_path"].as_str())
                    .collect();
                println!(
                    "    quantized weights: kept quantized (GGUF, --quantize); kernels {} (also \
                     runs: {}; missing here: {})",
                    q["kernel_path"].as_str().unwrap_or("?"),
                    others.join(", "),
                    q["unavailable"]
                        .as_array()
                        .filter(|a| !a.is_empty())
                        .map_or("none".into(), |a| a
                            .iter()
                            .filter_map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", "))
                );
                println!(
                    "    weights in memory: {}",
                    if q["huge_pages"] == true {
                        "transparent huge pages (decode streams them faster; \
                         QWEN2_HUGE_PAGES=0 reads a GGUF in place instead)"
                    } else {
                        "4 KiB pages (this system offers no transparent huge pages, or \
                         QWEN2_HUGE_PAGES=0): a GGUF is read in place from its mapping"
                    }
                );
            } else {
                println!(
                    "    quantized weights: {}",
                    q["note"].as_str().unwrap_or("?")
                );
            }
            if let Some(p) = d["policies"].as_object() {
                for (name, verdict) in p {
                    println!(
                        "    --precision {name:<8} {}",
                        verdict.as_str().unwrap_or("?")
                    );
                }
            }
        }
    }
    Ok(())
}
