//! `qwen2 diagnose`: the report as a table, as JSON, and as a chart.

use qwen2_burn::core::diagnose::{diagnose, Diagnosis, PolicyRun};
use qwen2_burn::core::monitor::dtype_max;
use qwen2_burn::core::Platform;

use crate::args::DiagnoseArgs;
use crate::model_setup::CliResult;
use qwen2_burn::core::engine::first_device;

pub fn diagnose_cmd<P: Platform>(a: DiagnoseArgs) -> CliResult {
    let device = first_device::<P>()?;
    let hw = P::probe(&device);
    let d = diagnose::<P::B>(&a.model, &device, hw, &a.ids)?;
    if let Some(path) = &a.chart {
        std::fs::write(path, crate::chart::layer_peaks_svg(&d))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if a.json {
        println!("{}", to_json(&d));
    } else {
        print!("{}", to_table(&d));
    }
    Ok(())
}

fn run_json(r: &PolicyRun) -> serde_json::Value {
    serde_json::json!({
        "precision": r.policy.name(),
        "skipped": r.skipped,
        "finite": r.finite,
        "first_nonfinite": r.first_nonfinite.as_ref().map(|f| serde_json::json!({
            "site": f.site, "dtype": f.dtype, "nan": f.nan, "inf": f.inf, "peak_before": f.peak_before,
        })),
        "max_abs_dlogits": r.max_abs_dlogits,
        "top1_agreement": r.top1_agreement,
        "kl_divergence": r.kl_divergence,
        "layer_peaks": r.layer_peaks,
    })
}

fn to_json(d: &Diagnosis) -> serde_json::Value {
    serde_json::json!({
        "hardware": d.hardware.to_string(),
        "positions": d.positions,
        "f16_max": dtype_max(burn::tensor::DType::F16),
        "bf16_max": dtype_max(burn::tensor::DType::BF16),
        "runs": d.runs.iter().map(run_json).collect::<Vec<_>>(),
    })
}

fn fmt_opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or("-".into(), f)
}

/// The human-readable report.
pub fn to_table(d: &Diagnosis) -> String {
    let mut s = format!(
        "device: {}\nprompt: {} tokens; every policy compared with f32 over all positions\n\n",
        d.hardware, d.positions
    );
    s += &format!(
        "{:<9} {:<7} {:>12} {:>7} {:>10} {:>12}  {}\n",
        "precision", "finite", "max|Δlogit|", "top-1", "KL", "peak |x|", "first non-finite op"
    );
    for r in &d.runs {
        if let Some(why) = &r.skipped {
            s += &format!("{:<9} skipped: {why}\n", r.policy.name());
            continue;
        }
        let peak = r.layer_peaks.iter().copied().fold(0f32, f32::max);
        let first = r.first_nonfinite.as_ref().map_or("-".to_string(), |f| {
            format!(
                "{} ({}, {} inf, {} NaN; peak before {:.3e})",
                f.site, f.dtype, f.inf, f.nan, f.peak_before
            )
        });
        s += &format!(
            "{:<9} {:<7} {:>12} {:>7} {:>10} {:>12.3e}  {}\n",
            r.policy.name(),
            if r.finite { "yes" } else { "NO" },
            fmt_opt(r.max_abs_dlogits, |v| format!("{v:.3e}")),
            fmt_opt(r.top1_agreement, |v| format!("{:.0}%", v * 100.0)),
            fmt_opt(r.kl_divergence, |v| format!("{v:.2e}")),
            peak,
            first
        );
    }
    let f32_run = &d.runs[0];
    s += "\nper-layer peak |x| (f32 plan) against the f16 limit 65504:\n";
    for (i, p) in f32_run.layer_peaks.iter().enumerate() {
        let ratio = p / 65504.0;
        let verdict = if ratio >= 1.0 {
            "overflows f16"
        } else if ratio * ratio * 65504.0 >= 1.0 {
            "fits f16, but its square does not (an f16 sum of squares overflows)"
        } else {
            "fits f16"
        };
        s += &format!(
            "  layer {i:>3}: {p:>11.3e}  ({:>6.1}% of f16 max)  {verdict}\n",
            ratio * 100.0
        );
    }
    s
}
