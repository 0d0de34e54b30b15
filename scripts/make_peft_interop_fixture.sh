#!/usr/bin/env bash
# The PEFT interoperability fixture: a LoRA adapter trained by `qwen2 finetune` on the bundled
# chat task, and the logits HF peft computes with it (scripts/check_peft_adapter.py), which
# crates/qwen2-cli/tests/cli_train.rs compares with ours. Run by `cargo xtask fixtures`; needs torch,
# transformers, peft.
set -euo pipefail
cd "$(dirname "$0")/.."
out=tests/fixtures/train
ids=1,60,70,80,90,100,110,120,2,5
cargo build -q --release --bin qwen2
rm -rf "$out/chat-adapter"
target/release/qwen2 finetune --backend cpu --model tests/fixtures/tiny-chat \
  --data "$out/chat.jsonl" --out "$out/chat-adapter" --lora --batch-size 6 --epochs 40 \
  --lr 2e-2 --seed 0
rm -rf "$out/chat-adapter/checkpoints"
merged=$(mktemp -d)
target/release/qwen2 merge --model tests/fixtures/tiny-chat --adapter "$out/chat-adapter" \
  --out "$merged" --save-dtype f32
"${PYTHON:-python3}" scripts/check_peft_adapter.py --base tests/fixtures/tiny-chat \
  --adapter "$out/chat-adapter" --ids "$ids" --out "$out/chat-adapter-peft-logits.json" \
  --merged "$merged" --tol 1e-4
rm -rf "$merged"
