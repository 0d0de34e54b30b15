//! LoRA fine-tuning through the library: teach the bundled tiny chat model six answers, then
//! ask it one of the questions with the trained adapter.
//!
//! cargo run --release --example finetune_lora [-- OUT_DIR]

use std::sync::atomic::AtomicBool;

use qwen2_burn::core::adapter::Adapter;
use qwen2_burn::core::burn::tensor::FloatDType;
use qwen2_burn::core::chat::{ChatOptions, ChatSession};
use qwen2_burn::core::generate::GenerateOptions;
use qwen2_burn::core::text::{ChatTemplate, TextTokenizer};
use qwen2_burn::core::{Platform, PrecisionPlan};
use qwen2_burn::cpu::Cpu;
use qwen2_burn::train::{Autodiff, Event, FinetuneOptions, Length, LoraOptions, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = "tests/fixtures/tiny-chat";
    let out = std::env::args().nth(1).unwrap_or_else(|| {
        std::env::temp_dir()
            .join("qwen2-lora-example")
            .display()
            .to_string()
    });

    // What `qwen2 finetune --lora --batch-size 6 --epochs 40 --lr 2e-2` does.
    let mut opts = FinetuneOptions::new(model, "tests/fixtures/train/chat.jsonl", &out);
    opts.lora = Some(LoraOptions::default()); // r 8, alpha 16, all seven projections
    opts.batch_size = 6;
    opts.length = Length::Epochs(40);
    opts.lr = 2e-2;
    let device = Cpu::devices().remove(0);
    let mut trainer = Trainer::<Autodiff<<Cpu as Platform>::B>>::new(opts, &device)?;
    trainer.run(&AtomicBool::new(false), &mut |event| {
        if let Event::Step(r) = event {
            if r.step % 10 == 0 {
                println!(
                    "step {:>2}: loss {:.4}, lr {:.2e}, grad norm {:.2}",
                    r.step, r.loss, r.lr, r.grad_norm
                );
            }
        }
    })?;
    println!("adapter written to {out} (PEFT format)");

    // Inference with the adapter, as `qwen2 run --adapter OUT` does.
    let mut inference = Cpu::load_model(model, PrecisionPlan::F32, &device, &mut |_, _| {})?;
    Adapter::open(&out)?.attach(&mut inference, FloatDType::F32)?;
    let tokenizer = TextTokenizer::from_model_dir(model)?;
    let template = ChatTemplate::from_model_dir(model)?;
    let mut generate = GenerateOptions::greedy(8);
    generate.eos_token_ids = tokenizer.token_id("<|im_end|>").into_iter().collect();
    let opts = ChatOptions {
        generate,
        stop_strings: vec![],
        template_vars: Default::default(),
        cancel: None,
    };
    let mut chat = ChatSession::new(&inference, &tokenizer, &template, None);
    let turn = chat.send("What is the capital of France?", &opts, |_| {})?;
    println!("What is the capital of France? -> {}", turn.reply);
    Ok(())
}
