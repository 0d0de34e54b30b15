#!/usr/bin/env python3
"""Measures HF transformers (PyTorch, CPU) on a model directory with the same protocol as
`qwen2 bench`: the same prompt ids (a fixed spread over the vocabulary, or --ids FILE), one
prefill of the whole prompt, then greedy decode steps with the KV cache; a warm-up run, then
--reps runs; prints one JSON line per dtype with median/min/max prefill and decode tokens/s.

    python3 scripts/bench_pytorch.py --model DIR [--dtypes f32,bf16] [--prompt-len 128]
        [--gen 32] [--reps 3] [--threads N] [--ids FILE]

Needs torch and transformers (CPU builds are enough). Used to put a peer measured on the same
machine next to `cargo xtask bench` in the README.
"""
import argparse
import json
import re
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def prompt_ids(args, vocab):
    if args.ids:
        text = open(args.ids).read()
        return [int(t) for t in re.split(r"[,\s]+", text) if t]
    # The same spread as `qwen2 bench`.
    return [(i * 7919 + 13) % min(vocab, 150_000) for i in range(args.prompt_len)]


def run(model, ids, gen):
    with torch.inference_mode():
        t = time.perf_counter()
        out = model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        nxt = int(out.logits[0, -1].float().argmax())
        prefill = time.perf_counter() - t
        cache = out.cache
        t = time.perf_counter()
        for _ in range(1, gen):
            out = model(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True)
            cache = out.cache
            nxt = int(out.logits[0, -1].float().argmax())
        return prefill, time.perf_counter() - t


def stats(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--ids")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
    for name in args.dtypes.split(","):
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=names[name])
        model.eval()
        ids = prompt_ids(args, model.config.vocab_size)
        run(model, ids, min(args.gen, 4))  # warm-up
        prefill, decode = [], []
        for _ in range(args.reps):
            p, d = run(model, ids, args.gen)
            prefill.append(len(ids) / p)
            decode.append((args.gen - 1) / d)
        print(json.dumps({
            "engine": f"transformers {__import__('transformers').__version__} / torch {torch.__version__}",
            "precision": name,
            "threads": torch.get_num_threads(),
            "prompt_tokens": len(ids),
            "gen_tokens": args.gen,
            "prefill_tok_s": stats(prefill),
            "decode_tok_s": stats(decode),
        }), flush=True)
        del model


if __name__ == "__main__":
    main()
