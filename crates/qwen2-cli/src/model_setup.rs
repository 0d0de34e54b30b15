//! What every model command does around the library's [`ModelLoader`]: build it from the
//! flags, draw the loading and prefill progress on a terminal, print the fallbacks and the
//! streamed text.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use qwen2_burn::core::engine::{ModelLoader, ModelSpec};
use qwen2_burn::core::fallback::Outcome;
use qwen2_burn::core::generate::ProgressFn;
use qwen2_burn::core::model::{QuantTarget, WeightQuantization};
use qwen2_burn::core::{Platform, Policy, Qwen2Model};

use crate::args::{ModelArgs, OnNonFinite};

pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The library's view of `--model`, `--adapter`, `--precision`, `--on-nonfinite` and
/// `--ctx-size`.
pub fn model_spec(args: &ModelArgs) -> CliResult<ModelSpec> {
    Ok(ModelSpec {
        dir: args.model.clone(),
        adapter: args.adapter.clone(),
        precision: args.precision.parse()?,
        fallback: args.on_nonfinite.map(|o| o == OnNonFinite::Fallback),
        ctx_size: args.ctx_size,
        quantization: match args.quantize.as_deref() {
            None => WeightQuantization::Stored,
            Some("none") => WeightQuantization::Dense,
            Some(t) => WeightQuantization::To(
                t.parse::<QuantTarget>()
                    .map_err(|e| format!("--quantize: {e}, or none"))?,
            ),
        },
    })
}

/// Resolves the flags on the first device of `P`.
pub fn loader<P: Platform>(args: &ModelArgs) -> CliResult<ModelLoader<P>> {
    Ok(ModelLoader::new(model_spec(args)?)?)
}

/// Loads the model with `policy`'s plan, drawing a progress line on stderr when it is a
/// terminal and the load takes more than a moment.
pub fn load<P: Platform>(
    loader: &ModelLoader<P>,
    policy: Policy,
) -> qwen2_burn::core::Result<Qwen2Model<P::B>> {
    let start = Instant::now();
    let show = std::io::stderr().is_terminal();
    let dir = loader.spec().dir.display().to_string();
    let mut drawn = false;
    let model = loader.load(policy, &mut |done, total| {
        let secs = start.elapsed().as_secs_f64();
        if show && (drawn || secs > 0.5) && done < total {
            let width = 30;
            let filled = width * done / total.max(1);
            eprint!(
                "\rloading {dir} ({policy}) [{}{}] {done}/{total} {secs:.1}s",
                "#".repeat(filled),
                "-".repeat(width - filled)
            );
            drawn = true;
        }
    });
    if drawn {
        eprint!("\r\x1b[K");
    }
    model
}

/// A prefill progress line for stderr when it is a terminal: tokens done / total and the rate,
/// drawn once the prefill has run for a second, erased when it ends.
pub fn prefill_progress() -> Option<ProgressFn> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let line = Mutex::new(PrefillLine::default());
    Some(ProgressFn(Arc::new(move |done, total| {
        let Ok(mut line) = line.lock() else { return };
        let now = Instant::now();
        if let Some(text) = line.update(done, total, now) {
            eprint!("{text}");
        }
    })))
}

/// The state of the prefill progress line: when this prefill started, whether a line is drawn.
#[derive(Debug, Default)]
struct PrefillLine {
    start: Option<Instant>,
    drawn: bool,
}

impl PrefillLine {
    /// What to write to the terminal for progress `(done, total)` at `now`, if anything:
    /// nothing during the first second, then the line redrawn in place, then erased at the end.
    fn update(&mut self, done: usize, total: usize, now: Instant) -> Option<String> {
        if done == 0 {
            *self = PrefillLine {
                start: Some(now),
                drawn: false,
            };
            return None;
        }
        let secs = now
            .duration_since(*self.start.get_or_insert(now))
            .as_secs_f64();
        if done >= total {
            return std::mem::take(&mut self.drawn).then(|| "\r\x1b[K".to_string());
        }
        if !self.drawn && secs <= 1.0 {
            return None;
        }
        self.drawn = true;
        Some(format!(
            "\rprefill {done}/{total} tokens, {:.1} tok/s",
            done as f64 / secs.max(1e-9)
        ))
    }
}

/// Which plan ran and why, for the stats lines: `bf16 plan, auto: rule cpu-bf16-checkpoint`,
/// `f32 plan, as requested`, `f16-safe plan, after a fallback`.
pub fn plan_note<P: Platform>(loader: &ModelLoader<P>, policy: Policy) -> String {
    let r = loader.resolved();
    let why = if policy != r.policy {
        "after a fallback".to_string()
    } else {
        match r.rule {
            Some(rule) => format!("auto: rule {rule}"),
            None => "as requested".to_string(),
        }
    };
    let weights = match loader.spec().quantization {
        _ if !loader.quantized_weights() => String::new(),
        WeightQuantization::To(t) => format!(", weights quantized to {t} at load"),
        _ => ", GGUF weights kept quantized".to_string(),
    };
    format!("{policy} plan, {why}{weights}")
}

/// Tells the user about plans that overflowed before the one that worked.
pub fn report_fallbacks<T>(outcome: &Outcome<T>) {
    for failed in &outcome.failed {
        eprintln!(
            "warning: --precision {} produced non-finite values: {}",
            failed.policy, failed.error
        );
    }
    if !outcome.failed.is_empty() {
        eprintln!("warning: fell back to --precision {}", outcome.policy);
    }
}

/// The plans that failed before the one that worked, for `--json`.
pub fn fallback_json<T>(outcome: &Outcome<T>) -> serde_json::Value {
    outcome
        .failed
        .iter()
        .map(|f| serde_json::json!({"precision": f.policy.name(), "error": f.error.to_string()}))
        .collect()
}

/// `"{label} 12.3 tok/s"`, or nothing when there is no rate to show.
pub fn rate_text(label: &str, rate: Option<f64>) -> String {
    rate.map_or(String::new(), |r| format!("{label} {r:.1} tok/s"))
}

/// Prints streamed text at once (stdout is line-buffered otherwise).
pub fn print_flush(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::PrefillLine;
    use std::time::{Duration, Instant};

    #[test]
    fn the_prefill_line_waits_a_second_then_redraws_and_erases() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut line = PrefillLine::default();
        assert_eq!(line.update(0, 4096, at(0)), None);
        assert_eq!(
            line.update(512, 4096, at(600)),
            None,
            "quiet in the first second"
        );
        assert_eq!(
            line.update(1024, 4096, at(1200)).as_deref(),
            Some("\rprefill 1024/4096 tokens, 853.3 tok/s")
        );
        assert_eq!(
            line.update(2048, 4096, at(1600)).as_deref(),
            Some("\rprefill 2048/4096 tokens, 1280.0 tok/s")
        );
        assert_eq!(
            line.update(4096, 4096, at(2000)).as_deref(),
            Some("\r\x1b[K")
        );
        // A short prefill draws nothing at all, not even the erase.
        assert_eq!(line.update(0, 100, at(3000)), None);
        assert_eq!(line.update(100, 100, at(3100)), None);
    }
}
