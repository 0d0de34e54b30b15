#!/usr/bin/env python3
"""Checks a LoRA adapter directory with PyTorch + peft: loads the base model, applies the adapter
and writes the logits it gives, optionally comparing them with a merged model.

Run: python3 scripts/check_peft_adapter.py --base tests/fixtures/tied-f32-gqa \
         --adapter tests/fixtures/train/lora-init --ids 1,2,3 --out /tmp/logits.json [--merged DIR]
Needs: pip install torch transformers peft safetensors.

Writes FILE.json = {"ids": [...], "logits": [[V floats] per position], "base_max_abs_diff": max
|peft - base| logits (0 for an adapter whose B is zero), and with --merged also "merged_max_abs_diff":
max |merged - peft|}. The models are loaded in f32 with eager attention. Exits non-zero with a
message when a model or adapter fails to load, the ids are out of range, the logits are not finite,
or (with --merged) the merged logits differ from the peft logits by more than --tol.
"""
import argparse
import json
import math
import sys
from pathlib import Path


def fail(msg):
    print(f"check_peft_adapter: error: {msg}", file=sys.stderr)
    sys.exit(1)


def logits_of(model, ids):
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    use_cache=False).logits[0].float()
    if not torch.isfinite(out).all():
        fail("non-finite logits")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="HF Qwen2 model directory")
    ap.add_argument("--adapter", type=Path, required=True, help="peft adapter directory")
    ap.add_argument("--ids", required=True, help="comma-separated input ids, e.g. 1,2,3")
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--merged", type=Path, help="HF model directory holding the adapter merged into the base")
    ap.add_argument("--tol", type=float, default=1e-3,
                    help="max allowed |merged - peft| logits (default 1e-3; 'inf' only reports)")
    args = ap.parse_args()

    try:
        ids = [int(x) for x in args.ids.split(",") if x.strip()]
    except ValueError:
        fail(f"--ids must be comma-separated integers, got {args.ids!r}")
    if not ids:
        fail("--ids is empty")
    for d, what in ((args.base, "--base"), (args.adapter, "--adapter"), (args.merged, "--merged")):
        if d is not None and not d.is_dir():
            fail(f"{what} {d} is not a directory")
    if not (args.adapter / "adapter_config.json").exists():
        fail(f"{args.adapter} has no adapter_config.json")

    import torch
    from peft import PeftModel
    from transformers import Qwen2ForCausalLM

    torch.set_num_threads(2)

    def load_hf(d):
        try:
            return Qwen2ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        except Exception as e:  # noqa: BLE001 - report any load failure plainly
            fail(f"cannot load {d} as Qwen2ForCausalLM: {type(e).__name__}: {e}")

    base = load_hf(args.base)
    vocab = base.config.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        fail(f"ids out of range [0, {vocab}): {bad}")
    try:
        model = PeftModel.from_pretrained(base, args.adapter).eval()
    except Exception as e:  # noqa: BLE001
        fail(f"cannot apply adapter {args.adapter}: {type(e).__name__}: {e}")
    n_lora = sum(1 for n, _ in model.named_parameters() if "lora_" in n)
    if n_lora == 0:
        fail(f"adapter {args.adapter} added no LoRA weights to the base model")

    logits = logits_of(model, ids)
    with model.disable_adapter():
        base_logits = logits_of(model, ids)
    result = {
        "ids": ids,
        "logits": logits.tolist(),
        "base_max_abs_diff": float((logits - base_logits).abs().max()),
    }
    msg = (f"{len(ids)} positions x {logits.shape[-1]} logits, {n_lora} LoRA tensors, "
           f"max |peft - base| {result['base_max_abs_diff']:.3g}")
    merged_err = None
    if args.merged is not None:
        merged = load_hf(args.merged)
        if merged.config.vocab_size != vocab:
            fail(f"merged vocab {merged.config.vocab_size} != base vocab {vocab}")
        merged_err = float((logits_of(merged, ids) - logits).abs().max())
        result["merged_max_abs_diff"] = merged_err
        msg += f", max |merged - peft| {merged_err:.3g} (tol {args.tol:g})"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result) + "\n")
    print(msg)
    if merged_err is not None and not (merged_err <= args.tol or math.isinf(args.tol)):
        fail(f"merged model logits differ from the peft logits by {merged_err:.3g} > {args.tol:g}")


if __name__ == "__main__":
    main()
