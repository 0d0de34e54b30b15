//! `qwen2 tokenize` and `qwen2 detokenize`: no model weights needed.

use qwen2_burn::core::text::TextTokenizer;

use crate::args::{DetokenizeArgs, TokenizeArgs, TokenizerSource};
use crate::model_setup::CliResult;

fn open(source: &TokenizerSource) -> CliResult<TextTokenizer> {
    Ok(match (&source.model, &source.tokenizer) {
        (_, Some(file)) => TextTokenizer::from_file(file)?,
        (Some(dir), None) => TextTokenizer::from_model_dir(dir)?,
        (None, None) => return Err("give --model DIR or --tokenizer FILE".into()),
    })
}

pub fn tokenize(a: &TokenizeArgs) -> CliResult {
    let tokenizer = open(&a.source)?;
    let ids = tokenizer.encode(&a.text)?;
    if a.json {
        println!("{}", serde_json::json!({ "ids": ids }));
    } else {
        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", ids.join(","));
    }
    Ok(())
}

pub fn detokenize(a: &DetokenizeArgs) -> CliResult {
    let tokenizer = open(&a.source)?;
    let text = tokenizer.decode(&a.ids, a.skip_special)?;
    if a.json {
        println!("{}", serde_json::json!({ "text": text }));
    } else {
        println!("{text}");
    }
    Ok(())
}
