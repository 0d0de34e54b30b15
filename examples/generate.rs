//! Greedy generation from token ids with the library API.
//!
//! cargo run --release --example generate -- tests/fixtures/untied-bf16-mqa 1,2,3 8

use qwen2_burn::core::generate::{generate, GenerateOptions};
use qwen2_burn::core::sampling::SamplingParams;
use qwen2_burn::core::{Platform, PrecisionPlan, Qwen2Model};
use qwen2_burn::cpu::Cpu;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .unwrap_or_else(|| "tests/fixtures/untied-bf16-mqa".into());
    let ids: Vec<u32> = args
        .next()
        .unwrap_or_else(|| "1,2,3".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let max_new_tokens = args.next().map_or(Ok(8), |s| s.parse())?;

    let device = Cpu::devices().remove(0);
    let model = Qwen2Model::<<Cpu as Platform>::B>::load(&dir, PrecisionPlan::F32, &device)?;
    let opts = GenerateOptions {
        max_new_tokens,
        sampling: SamplingParams::greedy(),
        eos_token_ids: model.config().eos_token_ids.clone(),
        monitor: Some(qwen2_burn::core::monitor::MonitorMode::Cheap),
        ..GenerateOptions::greedy(0)
    };
    let out = generate(&model, &ids, &opts, |id| print!("{id} "))?;
    if let Some(rate) = out.decode_tokens_per_s() {
        println!("\n{rate:.1} decode tokens/s");
    }
    Ok(())
}
