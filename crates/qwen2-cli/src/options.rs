//! Generation settings from the command line and the model directory's files.

use std::path::Path;

use qwen2_burn::core::engine::{self, GenerationRequest};
use qwen2_burn::core::generate::GenerateOptions;
use qwen2_burn::core::text::{GenerationConfig, TextTokenizer};
use qwen2_burn::core::Qwen2Config;

use crate::args::SamplingArgs;
use crate::model_setup::CliResult;

/// Sampling, token budget and eos ids: the flags where given, else `generation_config.json`,
/// else `config.json` or the GGUF metadata (eos) and `default_max_new_tokens` (the library's
/// [`engine::generate_options`]). `extra_eos` (such as the chat template's `<|im_end|>`) is
/// added to the eos ids unless `--eos` is given.
pub fn generate_options(
    s: &SamplingArgs,
    dir: &Path,
    extra_eos: &[u32],
    default_max_new_tokens: usize,
) -> CliResult<GenerateOptions> {
    let generation = GenerationConfig::from_model_dir(dir)?;
    let config_eos = match generation.eos_token_id {
        Some(_) => Vec::new(),
        None => Qwen2Config::from_model(dir)?.eos_token_ids,
    };
    let request = GenerationRequest {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        seed: s.seed,
        max_new_tokens: s.max_new_tokens,
        eos: s.eos.clone(),
    };
    engine::generate_options(
        &generation,
        &config_eos,
        &request,
        extra_eos,
        default_max_new_tokens,
    )
    .map_err(|e| match e {
        // A bad sampling value names its flag.
        qwen2_burn::core::Error::Invalid(m) => format!("--{m}").replace('_', "-").into(),
        e => e.into(),
    })
}

/// The model directory's tokenizer, with a hint when it has none.
pub fn model_tokenizer(dir: &Path, why: &str) -> CliResult<TextTokenizer> {
    TextTokenizer::from_model_dir(dir).map_err(|e| format!("{why} needs a tokenizer: {e}").into())
}

pub use engine::chat_end_ids;

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
