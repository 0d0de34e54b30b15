#!/usr/bin/env python3
"""Builds a Qwen2-0.5B-shaped random model for benchmarks (`cargo xtask bench-model --out DIR`).

Same shapes as Qwen2.5-0.5B: vocab 151936, hidden 896, intermediate 4864, 24 layers, 14 heads,
2 KV heads, rope_theta 1e6, tied embeddings; HF's default init (std 0.02); bf16 on disk (~1 GB).
Adds the real Qwen tokenizer from tests/fixtures/qwen-tokenizer so `qwen2 run` works on it too.
Not committed: it is 1 GB. Needs: pip install torch transformers safetensors.
"""
import argparse
import gzip
import json
import shutil
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

SEED = 20261128


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(SEED)
    cfg = Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
        bos_token_id=151643, eos_token_id=[151645, 151643], use_sliding_window=False,
    )
    model = Qwen2ForCausalLM(cfg).eval().to(torch.bfloat16)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok = Path(__file__).resolve().parent.parent / "tests/fixtures/qwen-tokenizer"
    (out / "tokenizer.json").write_bytes(gzip.decompress((tok / "tokenizer.json.gz").read_bytes()))
    shutil.copy(tok / "tokenizer_config.json", out / "tokenizer_config.json")
    (out / "generation_config.json").write_text(json.dumps(
        {"do_sample": False, "eos_token_id": [151645, 151643], "pad_token_id": 151643}, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{out}: {size / 1e9:.2f} GB, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters")


if __name__ == "__main__":
    main()
