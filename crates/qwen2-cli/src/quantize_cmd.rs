//! `qwen2 quantize`: a Hugging Face model directory written as a quantized GGUF file
//! (llama.cpp's format), with the relative error of every tensor.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::Args;
use qwen2_burn::core::gguf::{export_gguf, ExportReport, QuantScheme};

use crate::model_setup::CliResult;

/// `qwen2 quantize`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// GGUF file to write (written atomically; never one of the model's own files).
    #[arg(long, value_name = "FILE.gguf")]
    pub out: PathBuf,
    /// Quantization: q8_0, q4_0, q4_k_m (llama.cpp's mix) or q6_k.
    #[arg(long = "type", value_name = "q8_0|q4_0|q4_k_m|q6_k", value_parser = parse_scheme)]
    pub scheme: QuantScheme,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_scheme(s: &str) -> Result<QuantScheme, String> {
    s.parse()
}

/// Runs `qwen2 quantize`: progress on stderr when it is a terminal, then the report.
pub fn quantize_cmd(a: &QuantizeArgs) -> CliResult {
    let show = std::io::stderr().is_terminal();
    let mut progress = |done: usize, total: usize, name: &str| {
        if show {
            eprint!("\r\x1b[2Kquantizing {done}/{total} {name}");
            if done == total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        }
    };
    let report = export_gguf(&a.model, &a.out, a.scheme, &mut progress)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &ExportReport) {
    let width = r.tensors.iter().map(|t| t.name.len()).max().unwrap_or(6);
    println!(
        "{:width$}  {:<6}  {:>10}  note",
        "tensor", "type", "rel. error"
    );
    for t in &r.tensors {
        let note = t
            .fallback_from
            .map(|f| {
                format!(
                    "fallback from {f}: row {} not a multiple of its block",
                    t.dims[0]
                )
            })
            .unwrap_or_default();
        println!(
            "{:width$}  {:<6}  {:>10.3e}  {note}",
            t.name,
            t.ggml_type.name(),
            t.rel_error
        );
    }
    let worst = r
        .tensors
        .iter()
        .max_by(|a, b| a.rel_error.total_cmp(&b.rel_error));
    println!(
        "wrote {} ({}, {} tensors, {:.1} MiB){}",
        r.path.display(),
        r.scheme,
        r.tensors.len(),
        r.file_bytes as f64 / (1024.0 * 1024.0),
        worst
            .map(|w| format!("; worst rel. error {:.3e} ({})", w.rel_error, w.name))
            .unwrap_or_default()
    );
}
