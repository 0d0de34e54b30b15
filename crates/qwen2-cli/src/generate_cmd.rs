//! `qwen2 logits` and `qwen2 generate`: the model on raw ids or text, no chat template.

use qwen2_burn::core::generate::{generate_in_cache, Flow, GenerateOptions, Generation};
use qwen2_burn::core::monitor::{forward_checked, MonitorMode};
use qwen2_burn::core::text::TextStream;
use qwen2_burn::core::{LogitsFor, Platform, Qwen2Model};

use crate::args::{GenerateArgs, LogitsArgs, SamplingArgs};
use crate::model_setup::{
    fallback_json, load, loader, plan_note, prefill_progress, print_flush, rate_text,
    report_fallbacks, CliResult,
};
use crate::options::{generate_options, model_tokenizer};

/// An explicit `--max-new-tokens` that runs past the context is capped there, with a warning
/// (generation then ends with finish reason `length` when the context is full).
pub fn warn_if_capped<B: burn::prelude::Backend>(
    sampling: &SamplingArgs,
    prompt_tokens: usize,
    max_new_tokens: usize,
    model: &Qwen2Model<B>,
) {
    let context = model.context_length();
    let room = (context + 1).saturating_sub(prompt_tokens);
    if sampling.max_new_tokens.is_some() && max_new_tokens > room {
        eprintln!(
            "warning: --max-new-tokens {max_new_tokens} capped to {room}: the prompt's \
             {prompt_tokens} tokens and the reply must fit the context of {context} positions"
        );
    }
}

/// `qwen2 logits`: the logits of `--ids` as a float32 .npy file.
pub fn logits<P: Platform>(a: LogitsArgs) -> CliResult {
    let loader = loader::<P>(&a.model)?;
    let ids = &a.ids;
    let which = if a.all_positions {
        LogitsFor::All
    } else {
        LogitsFor::Last
    };
    let outcome = loader.run(|policy| {
        let model = load(&loader, policy)?;
        let logits = forward_checked(&model, ids, which, MonitorMode::Cheap)?;
        Ok(logits.cast(burn::tensor::FloatDType::F32).into_data())
    })?;
    report_fallbacks(&outcome);
    let data = &outcome.value;
    let values = data
        .to_vec::<f32>()
        .map_err(|e| format!("reading logits back: {e:?}"))?;
    let shape: Vec<usize> = if a.all_positions {
        data.shape.to_vec()
    } else {
        vec![data.shape[1]]
    };
    crate::npy::write_f32(&a.out, &shape, &values)
        .map_err(|e| format!("cannot write {}: {e}", a.out.display()))?;
    eprintln!(
        "wrote float32 logits {:?} ({} plan) to {}",
        shape,
        outcome.policy,
        a.out.display()
    );
    Ok(())
}

/// `qwen2 generate`: raw continuation of ids or text, no chat template.
pub fn generate_cmd<P: Platform>(a: GenerateArgs) -> CliResult {
    let dir = &a.model.model;
    let prompt = if a.ids.is_empty() {
        Some(crate::options::prompt_text(&a.prompt)?.ok_or(
            "give the prompt as --ids, --prompt, --prompt-file, a positional argument or on stdin",
        )?)
    } else {
        None
    };
    // Text needs the tokenizer; ids need it only for stop strings.
    let tokenizer = if prompt.is_some() || !a.sampling.stop.is_empty() {
        Some(model_tokenizer(dir, "--prompt / --stop")?)
    } else {
        None
    };
    let prompt_ids = match (&prompt, &tokenizer) {
        (Some(text), Some(t)) => t.encode(text)?,
        _ => a.ids.clone(),
    };
    let opts = generate_options(&a.sampling, dir, &[], 32)?;
    let loader = loader::<P>(&a.model)?;
    let as_text = prompt.is_some();
    // Stream only when no fallback can restart the output halfway.
    let stream = !a.json && !loader.may_restart();
    let mut warned = false;
    let mut weights = String::new();
    let outcome = loader.run(|policy| {
        let model = load(&loader, policy)?;
        weights = model.weight_storage_text();
        if !warned {
            warn_if_capped(&a.sampling, prompt_ids.len(), opts.max_new_tokens, &model);
            warned = true;
        }
        let mut text = tokenizer
            .as_ref()
            .map(|t| TextStream::new(t, true, &a.sampling.stop));
        let mut cache = model.new_cache(prompt_ids.len() + opts.max_new_tokens);
        let opts = GenerateOptions {
            prefill_progress: prefill_progress(),
            ..opts.clone()
        };
        let mut streamed_ids = 0;
        let g = generate_in_cache(&model, &mut cache, &[], &prompt_ids, &opts, |id| {
            let mut flow = Flow::Continue;
            if let Some(t) = text.as_mut().filter(|_| !opts.eos_token_ids.contains(&id)) {
                let step = t.push(id)?;
                if step.stopped {
                    flow = Flow::Stop;
                }
                if stream && as_text {
                    print_flush(&step.text);
                }
            }
            if stream && !as_text {
                // Comma-separated, as `tokenize` prints ids and `--ids` takes them.
                let sep = if streamed_ids == 0 { "" } else { "," };
                print_flush(&format!("{sep}{id}"));
                streamed_ids += 1;
            }
            Ok(flow)
        })?;
        let reply = match text.as_mut() {
            Some(t) => {
                let rest = t.finish()?;
                if stream && as_text {
                    print_flush(&rest);
                }
                Some(t.text().to_string())
            }
            None => None,
        };
        Ok((g, reply))
    })?;
    report_fallbacks(&outcome);
    let (out, reply): &(Generation, Option<String>) = &outcome.value;
    if a.json {
        let mut json = serde_json::json!({
            "ids": out.ids,
            "prompt_tokens": out.prompt_tokens,
            "generated_tokens": out.ids.len(),
            "stopped_on_eos": out.stopped_on_eos,
            "prefill_seconds": out.prefill_time.as_secs_f64(),
            "finish_reason": out.finish_reason(),
            "seed": opts.sampling.seed,
            "prefill_tokens_per_s": out.prefill_tokens_per_s(),
            "decode_seconds": out.decode_time.as_secs_f64(),
            "decode_tokens_per_s": out.decode_tokens_per_s(),
            "backend": P::NAME,
            "precision": outcome.policy.name(),
            "weights": weights,
            "requested_precision": a.model.precision,
            "fallbacks": fallback_json(&outcome),
        });
        if let Some(text) = reply {
            json["text"] = text.clone().into();
            json["stopped_on_stop_string"] = out.stopped_by_caller.into();
        }
        println!("{json}");
    } else {
        if !stream {
            match (as_text, reply) {
                (true, Some(text)) => print!("{text}"),
                _ => {
                    let ids: Vec<String> = out.ids.iter().map(u32::to_string).collect();
                    print!("{}", ids.join(" "));
                }
            }
        }
        println!();
        eprintln!(
            "{} prompt tokens, {} generated, finish reason {} ({}){}{}",
            out.prompt_tokens,
            out.ids.len(),
            out.finish_reason(),
            plan_note(&loader, outcome.policy),
            rate_text("; prefill", out.prefill_tokens_per_s()),
            rate_text(", decode", out.decode_tokens_per_s())
        );
    }
    Ok(())
}
