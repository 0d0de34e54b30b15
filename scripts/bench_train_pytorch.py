#!/usr/bin/env python3
"""Measures fine-tuning speed of HF transformers (+ peft for LoRA) on CPU with the same protocol
as `qwen2 finetune`: the same pre-tokenized records in the same order, the same loss, clipping,
optimizer and schedule; the wall time of every optimizer step; prints one JSON line on stdout.

    python3 scripts/bench_train_pytorch.py --model DIR --data FILE.jsonl --steps N --batch-size B
        [--grad-accum 1] [--lora --lora-r 8 --lora-alpha 16] [--precision f32|bf16] [--lr 2e-4]
        [--threads N] [--max-seq-len L] [--attn sdpa|eager] [--bf16-mode autocast|load]

DIR is an HF Qwen2 model directory; FILE.jsonl holds pre-tokenized records
{"input_ids": [...], "labels": [...]} (label -100 = no loss; labels default to input_ids), one
per line. Needs torch and transformers, and peft for --lora (CPU builds are enough). Used by
`cargo xtask bench-train --pytorch` to put a PyTorch row beside ours.

Training semantics (those of scripts/make_train_fixtures.py and the qwen2-train crate):
  - micro-batches of batch_size records in file order, epochs back to back (an epoch's last
    micro-batch is short when batch_size does not divide the record count, as in qwen2-train's
    BatchPlan), right-padded to the longest record with id 0 / label -100 and attention_mask 0;
    a step is grad_accum consecutive micro-batches. Records longer than --max-seq-len (default
    min(1024, max_position_embeddings), as in qwen2 finetune) are truncated.
  - loss: N = label tokens of the whole step after the causal shift; each micro-batch contributes
    sum-reduced cross entropy / N, backward per micro-batch.
  - clip_grad_norm_(1.0) over the trainable parameters; torch.optim.AdamW(lr, betas (0.9, 0.999),
    eps 1e-8, weight_decay 0); transformers' "cosine" schedule without warmup over --steps steps.
  - full fine-tuning: every parameter trainable, f32. LoRA: peft LoraConfig(r, alpha, dropout 0,
    q/k/v/o/gate/up/down_proj), only the adapters trainable, base weights f32.
  - bf16 (--bf16-mode): "autocast" keeps f32 master weights and runs torch.autocast;
    "load" loads the model in bfloat16 as peft users do (LoRA adapters upcast to f32 by peft,
    a full fine-tune then trains bf16 parameters with AdamW).
  - attention: --attn, default "sdpa" (transformers' default: what a PyTorch user gets);
    "eager" is the same math as ours, op for op.

Measured: time.perf_counter around each whole optimizer step (collation, forward, backward,
clipping, AdamW, schedule; as qwen2-train's StepRecord.seconds), tokens per step = non-padding
tokens. The first step is a warm-up: the throughput statistics leave it out (losses keep it).
"""
import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

# The batching and loss of the training goldens, so both sides of bench-train compute the same.
from make_train_fixtures import IGNORE, LORA_TARGETS, PAD_ID, collate, micro_loss  # noqa: E402


def fail(message):
    print(f"bench_train_pytorch: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


# ---------------------------------------------------------------------------------------------
# data


def load_records(path, vocab_size, max_len):
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        fail(f"cannot read data file {path}: {e}")
    records, truncated = [], 0
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"{where}: not valid JSON: {e}")
        if not isinstance(value, dict) or "input_ids" not in value:
            fail(f"{where}: expected a pre-tokenized record {{\"input_ids\": [...], \"labels\": [...]}}")
        ids, labels = value["input_ids"], value.get("labels", value["input_ids"])
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            fail(f"{where}: input_ids must be a list of integers")
        if not isinstance(labels, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in labels):
            fail(f"{where}: labels must be a list of integers")
        if len(labels) != len(ids):
            fail(f"{where}: {len(labels)} labels for {len(ids)} input ids")
        if not ids:
            fail(f"{where}: the record has no tokens")
        bad = next(((p, t) for p, t in enumerate(ids) if not 0 <= t < vocab_size), None)
        if bad is not None:
            fail(f"{where}: token id {bad[1]} at position {bad[0]} is outside the vocabulary ({vocab_size} ids)")
        bad = next(((p, t) for p, t in enumerate(labels) if t != IGNORE and not 0 <= t < vocab_size), None)
        if bad is not None:
            fail(f"{where}: label {bad[1]} at position {bad[0]} is neither -100 nor in the vocabulary")
        if len(ids) > max_len:
            ids, labels = ids[:max_len], labels[:max_len]
            truncated += 1
        records.append({"input_ids": ids, "labels": labels})
    if not records:
        fail(f"{path}: no records (the file is empty)")
    if all(n_label_tokens_of(r) == 0 for r in records):
        fail(f"{path}: no record has a token to learn (every label is -100)")
    if truncated:
        print(f"warning: {truncated} records truncated to {max_len} tokens", file=sys.stderr)
    return records


def n_label_tokens_of(record):
    return sum(1 for t in record["labels"][1:] if t != IGNORE)


def step_records(n_records, batch_size, grad_accum, step):
    """Record indices of each micro-batch of optimizer step `step` (qwen2-train's BatchPlan
    without shuffling: file order, epochs back to back, an epoch's last micro-batch may be short)."""
    per_epoch = math.ceil(n_records / batch_size)
    out = []
    for k in range(step * grad_accum, (step + 1) * grad_accum):
        j = k % per_epoch
        out.append(list(range(j * batch_size, min((j + 1) * batch_size, n_records))))
    return out


# ---------------------------------------------------------------------------------------------
# model


def load_model(args):
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(args.model)
        # f32 master weights unless bf16 is loaded as bf16 (--bf16-mode load; autocast: see
        # train_step).
        dtype = torch.bfloat16 if args.precision == "bf16" and args.bf16_mode == "load" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(
            args.model, config=config, dtype=dtype, attn_implementation=args.attn
        )
    except Exception as e:  # missing directory, bad config, missing or broken weights
        fail(f"cannot load the model from {args.model}: {type(e).__name__}: {e}")
    model.config.use_cache = False
    if args.lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as e:
            fail(f"--lora needs peft: {e}")
        torch.manual_seed(0)  # the adapters' initial A matrices (B starts at zero)
        model = get_peft_model(model, LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=0.0,
            bias="none",
            target_modules=list(LORA_TARGETS),
            task_type="CAUSAL_LM",
        ))
    return model.train(), config


# ---------------------------------------------------------------------------------------------
# training


def train_step(model, params, opt, sched, records, micro_indices, bf16):
    """One optimizer step; returns (loss, non-padding tokens)."""
    micro = [collate([records[i] for i in idx]) for idx in micro_indices]
    tokens = int(sum(int(mask.sum()) for _, _, mask in micro))
    # A step without any label token (only possible with label-less records) trains nothing:
    # dividing by 1 keeps the loss and the gradients at 0 instead of NaN.
    n_items = max(1, int(sum(int((labels[:, 1:] != IGNORE).sum()) for _, labels, _ in micro)))
    loss = 0.0
    for ids, labels, mask in micro:
        if bf16:
            # bf16 = torch.autocast on CPU: the f32 master weights stay the parameters (and AdamW
            # stays f32); autocast runs the matmuls/linears (the projections, the head) in bf16
            # and the gradients flow back into the f32 masters. This is the usual way to train
            # bf16 on CPU with HF; our bf16 plan likewise keeps f32 master weights and computes
            # the projections in bf16. (make_train_fixtures.py's bf16 goldens instead copy the
            # masters into a whole bf16 model each step: same idea, different numerics.)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                li = micro_loss(model, ids, labels, mask, n_items)
        else:
            li = micro_loss(model, ids, labels, mask, n_items)
        li.backward()
        loss += float(li.detach())
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss, tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="HF Qwen2 model directory")
    ap.add_argument("--data", required=True, help="JSONL of pre-tokenized records")
    ap.add_argument("--steps", type=int, required=True, help="optimizer steps (the first is a warm-up)")
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16)
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--threads", type=int, default=0, help="0: os.cpu_count()")
    ap.add_argument("--bf16-mode", choices=["autocast", "load"], default="autocast",
                    help="bf16: torch.autocast over f32 masters, or the model loaded in bf16")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa",
                    help="attention implementation (default sdpa, transformers' default)")
    ap.add_argument("--max-seq-len", type=int, default=0,
                    help="truncate longer records (0: min(1024, max_position_embeddings), as qwen2 finetune)")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first step is a warm-up)")
    if args.batch_size < 1 or args.grad_accum < 1:
        ap.error("--batch-size and --grad-accum must be at least 1")
    torch.set_num_threads(args.threads or os.cpu_count() or 1)

    # Anything a library prints on stdout (peft, transformers) goes to stderr: stdout carries only
    # the result line.
    with contextlib.redirect_stdout(sys.stderr):
        if not (Path(args.model) / "config.json").is_file():
            fail(f"{args.model}: not a model directory (no config.json)")
        if not Path(args.data).is_file():
            fail(f"{args.data}: no such data file")
        model, config = load_model(args)
        max_len = args.max_seq_len or min(1024, config.max_position_embeddings)
        records = load_records(args.data, config.vocab_size, max_len)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        sched = transformers.get_scheduler("cosine", opt, num_warmup_steps=0, num_training_steps=args.steps)
        print(
            f"fine-tuning {args.model} ({'LoRA' if args.lora else 'full'}, {args.precision}) on "
            f"{len(records)} records: {args.steps} steps of {args.grad_accum} x {args.batch_size} records, "
            f"{sum(p.numel() for p in params)} trained values, {torch.get_num_threads()} threads",
            file=sys.stderr, flush=True,
        )
        losses, rates, seconds = [], [], []
        for step in range(args.steps):
            micro_indices = step_records(len(records), args.batch_size, args.grad_accum, step)
            t = time.perf_counter()
            autocast = args.precision == "bf16" and args.bf16_mode == "autocast"
            loss, tokens = train_step(model, params, opt, sched, records, micro_indices, autocast)
            dt = time.perf_counter() - t
            if not math.isfinite(loss):
                fail(f"non-finite loss at step {step + 1}: {loss}")
            losses.append(loss)
            seconds.append(dt)
            rates.append(tokens / max(dt, 1e-12))
            print(f"step {step + 1}/{args.steps}: loss {loss:.4f}, {tokens} tokens in {dt:.3f}s "
                  f"({rates[-1]:.1f} tok/s){' (warm-up)' if step == 0 else ''}", file=sys.stderr, flush=True)

    peft_version = __import__("peft").__version__ if args.lora else None  # null: peft not used
    steady, steady_s = rates[1:], seconds[1:]
    print(json.dumps({
        "engine": "pytorch",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "precision": args.precision,
        "bf16_mode": args.bf16_mode if args.precision == "bf16" else None,
        "attn": args.attn,
        "lora": args.lora,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seq_len": statistics.mean(len(r["input_ids"]) for r in records),
        "tokens_per_s": statistics.median(steady),
        "tokens_per_s_min": min(steady),
        "tokens_per_s_max": max(steady),
        "step_seconds_median": statistics.median(steady_s),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "losses": losses,
    }), flush=True)


if __name__ == "__main__":
    main()
