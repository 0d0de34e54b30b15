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
                "policies": policies,
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
