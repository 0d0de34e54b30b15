//! Generation settings from the command line and the model directory's files.

use std::path::Path;

use qwen2_burn::core::generate::GenerateOptions;
use qwen2_burn::core::monitor::MonitorMode;
use qwen2_burn::core::text::{GenerationConfig, SamplingOverrides, TextTokenizer};
use qwen2_burn::core::Qwen2Config;

use crate::args::SamplingArgs;
use crate::commands::CliResult;

/// A seed for a run without `--seed`: the clock's nanoseconds mixed with the process id, so
/// two runs in the same second differ.
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seed = nanos ^ (u64::from(std::process::id()) << 32);
    tracing::info!(seed, "no --seed: sampling with a fresh seed");
    seed
}

/// Sampling, token budget and eos ids: the flags where given, else `generation_config.json`,
/// else `config.json` (eos) and `default_max_new_tokens`. `extra_eos` (such as the chat
/// template's `<|im_end|>`) is added to the eos ids unless `--eos` is given.
pub fn generate_options(
    s: &SamplingArgs,
    dir: &Path,
    extra_eos: &[u32],
    default_max_new_tokens: usize,
) -> CliResult<GenerateOptions> {
    let gen_config = GenerationConfig::from_model_dir(dir)?;
    let sampling = gen_config.sampling(&SamplingOverrides {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        seed: s.seed.unwrap_or_else(fresh_seed),
    });
    sampling
        .validate()
        .map_err(|e| format!("--{e}").replace('_', "-"))?;
    let eos_token_ids = match &s.eos {
        Some(ids) => ids.clone(),
        None => {
            let mut ids = match &gen_config.eos_token_id {
                Some(ids) => ids.clone(),
                None => Qwen2Config::from_file(dir.join("config.json"))?.eos_token_ids,
            };
            for id in extra_eos {
                if !ids.contains(id) {
                    ids.push(*id);
                }
            }
            ids
        }
    };
    let max_new_tokens = s
        .max_new_tokens
        .or(gen_config.max_new_tokens)
        .unwrap_or(default_max_new_tokens);
    tracing::info!(
        ?sampling,
        ?eos_token_ids,
        max_new_tokens,
        "generation settings"
    );
    Ok(GenerateOptions {
        max_new_tokens,
        sampling,
        eos_token_ids,
        monitor: Some(MonitorMode::Cheap),
    })
}

/// The model directory's tokenizer, with a hint when it has none.
pub fn model_tokenizer(dir: &Path, why: &str) -> CliResult<TextTokenizer> {
    TextTokenizer::from_model_dir(dir).map_err(|e| format!("{why} needs a tokenizer: {e}").into())
}

/// The ids of the ChatML turn markers the tokenizer has, as extra eos ids for chat.
pub fn chat_end_ids(tokenizer: &TextTokenizer) -> Vec<u32> {
    ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| tokenizer.token_id(t))
        .collect()
}

/// The text prompt of `run`/`generate`: `--prompt`, `--prompt-file` (`-` = stdin), the
/// positional argument, or stdin when it is piped; `None` when none was given.
pub fn prompt_text(p: &crate::args::PromptArgs) -> CliResult<Option<String>> {
    use std::io::{IsTerminal, Read};
    let read_stdin = || -> CliResult<String> {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading the prompt from standard input: {e}"))?;
        Ok(text)
    };
    if let Some(text) = p.prompt.clone().or_else(|| p.text.clone()) {
        return Ok(Some(text));
    }
    // A file or a pipe usually ends with one newline that is not part of the prompt.
    let chomp = |t: String| {
        let end = t.strip_suffix('\n').map_or(t.len(), str::len);
        let end = t[..end].strip_suffix('\r').map_or(end, str::len);
        t[..end].to_string()
    };
    let text = match &p.prompt_file {
        Some(f) if f.as_os_str() == "-" => read_stdin()?,
        Some(f) => {
            std::fs::read_to_string(f).map_err(|e| format!("--prompt-file {}: {e}", f.display()))?
        }
        None if !std::io::stdin().is_terminal() => read_stdin()?,
        None => return Ok(None),
    };
    let text = chomp(text);
    Ok((!text.is_empty() || p.prompt_file.is_some()).then_some(text))
}
