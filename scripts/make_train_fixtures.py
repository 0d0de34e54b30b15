#!/usr/bin/env python3
"""Builds the fine-tuning goldens in tests/fixtures/train/ with PyTorch, transformers and peft (CPU).

Run: python3 scripts/make_train_fixtures.py --out tests/fixtures
     (python3 scripts/make_train_fixtures.py --out tests/fixtures --dry-run prints the unclipped
     gradient norms that FULL_MAX_GRAD_NORM / LORA_MAX_GRAD_NORM were picked from.)
Needs: pip install torch transformers peft safetensors numpy. It reads the committed base model
tests/fixtures/tied-f32-gqa (made by scripts/make_fixtures.py). CI never runs this: it uses the
committed output.

Output (tests/fixtures/train/):
  tokens.jsonl                  8 records {"input_ids": [...], "labels": [...]}, lengths 5..24,
                                leading labels (and a middle one in two records) set to -100.
  lora-init/                    the initial LoRA adapter (peft save_pretrained: adapter_config.json,
                                adapter_model.safetensors) that both LoRA runs start from.
  full_step0_grads.safetensors  f32 full fine-tuning: step 0's accumulated gradient (both micro-
                                batches, before clipping), keyed by the names in model.safetensors.
  lora_step0_grads.safetensors  the same for the f32 LoRA run, keyed by the adapter file's names.
  goldens.json                  per step: loss, lr, grad_norm (before clipping), clipped, for full
                                and LoRA fine-tuning, each in f32 and in bf16 mixed precision.

The trainer semantics the Rust side implements:
  - micro-batch = the next batch_size records in file order, wrapping to record 0 at the end of the
    file (no shuffling), right-padded to its longest record with input id 0 / label -100 and
    attention_mask 0 on the padding; a step is grad_accum consecutive micro-batches.
  - loss (HF Trainer num_items_in_batch): N = label tokens of the whole step after the causal shift;
    each micro-batch contributes sum-reduced cross entropy / N, backward per micro-batch.
  - clip_grad_norm_(max_grad_norm) over the trainable parameters, AdamW(betas 0.9/0.999, eps 1e-8,
    decoupled weight decay on every trainable parameter), transformers' "cosine" schedule with 3
    warmup steps over 20 steps (so the lr of step 0 is 0). lr is recorded before optimizer.step().
  - bf16: f32 master weights and f32 AdamW; each step copies the masters into a bf16 model, runs
    forward/backward there (loss from logits.float()), and sums the micro-batch gradients in f32.
"""
import argparse
import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import Qwen2ForCausalLM, get_scheduler

SEED = 20261212
BASE_NAME = "tied-f32-gqa"
VOCAB = 320
N_RECORDS = 8
MIN_LEN, MAX_LEN = 5, 24
PAD_ID = 0
IGNORE = -100

BATCH_SIZE = 2
GRAD_ACCUM = 2
STEPS = 20
WARMUP = 3

FULL_LR, FULL_WD = 1e-3, 0.1
LORA_LR, LORA_WD = 5e-3, 0.0
# Picked from --dry-run (no clipping; medians 22.0 full, 12.3 LoRA): round values near the median of
# the 20 gradient norms, so that clipping is active on roughly half the steps (10 and 9 of 20; the
# nearest norm is 0.2 from the threshold). The initial loss is ~31, not ln(320): the base fixture's
# embeddings (tied to the head) have std 1, so its logits are large.
FULL_MAX_GRAD_NORM = 22.0
LORA_MAX_GRAD_NORM = 12.5

LORA_R, LORA_ALPHA = 8, 16
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------------------------------------
# data


def make_records():
    rng = np.random.default_rng(SEED)
    middle = list(rng.choice(np.arange(MIN_LEN + 1, MAX_LEN), size=N_RECORDS - 2, replace=False))
    lengths = [MIN_LEN, MAX_LEN] + [int(x) for x in middle]
    rng.shuffle(lengths)
    with_hole = set(int(i) for i in rng.choice(N_RECORDS, size=2, replace=False))
    records = []
    for i, n in enumerate(lengths):
        ids = [int(x) for x in rng.integers(0, VOCAB, size=n)]
        k = int(rng.integers(1, 4))  # 1..=3
        labels = [IGNORE] * k + ids[k:]
        if i in with_hole:
            labels[int(rng.integers(k + 1, n - 1))] = IGNORE  # strictly inside, keeps the last label
        records.append({"input_ids": ids, "labels": labels})
    assert len(set(lengths)) == N_RECORDS and min(lengths) == MIN_LEN and max(lengths) == MAX_LEN
    return records


def collate(recs):
    width = max(len(r["input_ids"]) for r in recs)
    ids = torch.full((len(recs), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(recs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(recs), width), dtype=torch.long)
    for b, r in enumerate(recs):
        n = len(r["input_ids"])
        ids[b, :n] = torch.tensor(r["input_ids"])
        labels[b, :n] = torch.tensor(r["labels"])
        mask[b, :n] = 1
    return ids, labels, mask


def step_batches(records):
    """Yields, per optimizer step, its grad_accum micro-batches (file order, wrapping)."""
    cursor = 0
    while True:
        micro = []
        for _ in range(GRAD_ACCUM):
            recs = []
            for _ in range(BATCH_SIZE):
                recs.append(records[cursor])
                cursor = (cursor + 1) % len(records)
            micro.append(collate(recs))
        yield micro


def n_label_tokens(micro):
    return int(sum((labels[:, 1:] != IGNORE).sum() for _, labels, _ in micro))


def micro_loss(model, ids, labels, mask, n_items):
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        reduction="sum",
        ignore_index=IGNORE,
    )
    return ce / n_items


# ---------------------------------------------------------------------------------------------
# models


def load_base(base_dir):
    model = Qwen2ForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    assert model.lm_head.weight is model.model.embed_tokens.weight, "expected tied embeddings"
    return model.train()


def lora_config():
    return LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )


def make_lora(base_dir):
    model = load_base(base_dir)
    torch.manual_seed(0)
    return get_peft_model(model, lora_config()).train()


def adapter_key(name):
    """PEFT parameter name -> the name in adapter_model.safetensors (adapter name dropped)."""
    return name.replace(".default.", ".")


# ---------------------------------------------------------------------------------------------
# training


def train(master, records, lr, wd, max_grad_norm, bf16, grad_names=None):
    """Runs STEPS optimizer steps; returns the per-step records and (if grad_names) the step-0
    gradients keyed by grad_names(name)."""
    params = [(n, p) for n, p in master.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW([p for _, p in params], lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    sched = get_scheduler("cosine", opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    if bf16:
        import copy

        shadow = copy.deepcopy(master).to(torch.bfloat16).train()
        shadow_params = dict(shadow.named_parameters())
        master_params = dict(master.named_parameters())
        assert shadow_params.keys() == master_params.keys()
    log, step0_grads = [], None
    batches = step_batches(records)
    for step in range(STEPS):
        micro = next(batches)
        n_items = n_label_tokens(micro)
        loss = 0.0
        if not bf16:
            for ids, labels, mask in micro:
                li = micro_loss(master, ids, labels, mask, n_items)
                li.backward()
                loss += float(li.detach())
        else:
            with torch.no_grad():
                for n, p in shadow_params.items():
                    p.copy_(master_params[n])
            acc = {n: torch.zeros_like(p) for n, p in params}
            for ids, labels, mask in micro:
                li = micro_loss(shadow, ids, labels, mask, n_items)
                li.backward()
                loss += float(li.detach())
                for n, _ in params:
                    g = shadow_params[n].grad
                    if g is not None:
                        acc[n] += g.float()
                shadow.zero_grad(set_to_none=True)
            for n, p in params:
                p.grad = acc[n]
        if step == 0 and grad_names is not None:
            step0_grads = {
                grad_names(n): (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone().contiguous()
                for n, p in params
            }
        norm = float(torch.nn.utils.clip_grad_norm_([p for _, p in params], max_grad_norm))
        cur_lr = float(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(loss) or not math.isfinite(norm):
            raise SystemExit(f"non-finite loss/grad norm at step {step}: {loss}, {norm}")
        log.append({"step": step, "loss": loss, "lr": cur_lr, "grad_norm": norm, "clipped": norm > max_grad_norm})
    return log, step0_grads


def summarize(label, log):
    clipped = sum(r["clipped"] for r in log)
    norms = [r["grad_norm"] for r in log]
    print(f"  {label}: loss {log[0]['loss']:.4f} -> {log[-1]['loss']:.4f}, grad norm median "
          f"{statistics.median(norms):.3g} (min {min(norms):.3g}, max {max(norms):.3g}), "
          f"clipped {clipped}/{len(log)}")


def spread(a, b, key):
    return max(abs(x[key] - y[key]) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    ap.add_argument("--dry-run", action="store_true",
                    help="only print the unclipped f32 gradient norms (to pick max_grad_norm); writes nothing")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    base_dir = args.out / BASE_NAME
    if not (base_dir / "model.safetensors").exists():
        raise SystemExit(f"{base_dir}/model.safetensors not found: run scripts/make_fixtures.py first")
    records = make_records()

    if args.dry_run:
        for label, build, lr, wd in (
            ("full f32", lambda: load_base(base_dir), FULL_LR, FULL_WD),
            ("lora f32", lambda: make_lora(base_dir), LORA_LR, LORA_WD),
        ):
            log, _ = train(build(), records, lr, wd, math.inf, bf16=False)
            summarize(label, log)
            print("    norms:", " ".join(f"{r['grad_norm']:.3g}" for r in log))
        return

    out = args.out / "train"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with open(out / "tokens.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")

    # --- full fine-tuning --------------------------------------------------------------------
    full = {}
    log, grads = train(load_base(base_dir), records, FULL_LR, FULL_WD, FULL_MAX_GRAD_NORM, bf16=False,
                       grad_names=lambda n: n)
    on_disk = set(load_file(str(base_dir / "model.safetensors")).keys())
    assert set(grads) == on_disk, (set(grads) ^ on_disk)
    save_file(grads, str(out / "full_step0_grads.safetensors"))
    full["f32"] = log
    full["bf16"], _ = train(load_base(base_dir), records, FULL_LR, FULL_WD, FULL_MAX_GRAD_NORM, bf16=True)

    # --- LoRA ----------------------------------------------------------------------------------
    lora = {}
    model = make_lora(base_dir)
    model.save_pretrained(out / "lora-init")
    (out / "lora-init" / "README.md").unlink(missing_ok=True)
    # peft keeps target_modules as a set: sort it so that the committed file is reproducible
    cfg_path = out / "lora-init" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    init_adapter = load_file(str(out / "lora-init" / "adapter_model.safetensors"))
    log, grads = train(model, records, LORA_LR, LORA_WD, LORA_MAX_GRAD_NORM, bf16=False, grad_names=adapter_key)
    assert set(grads) == set(init_adapter), (set(grads) ^ set(init_adapter))
    save_file(grads, str(out / "lora_step0_grads.safetensors"))
    lora["f32"] = log
    base_weights = load_file(str(base_dir / "model.safetensors"))
    trained_base = model.get_base_model().state_dict()
    for name, w in base_weights.items():
        mod_name = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        p = trained_base.get(name, trained_base.get(mod_name))
        if p is None or not torch.equal(p, w):
            raise SystemExit(f"LoRA training changed (or lost) base weight {name}")
    # the bf16 run starts from the very same adapter: the saved one, loaded into a fresh base
    model = PeftModel.from_pretrained(load_base(base_dir), out / "lora-init", is_trainable=True).train()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, init_adapter[adapter_key(n)]), n
    lora["bf16"], _ = train(model, records, LORA_LR, LORA_WD, LORA_MAX_GRAD_NORM, bf16=True)

    goldens = {
        "base": BASE_NAME,
        "data": "tokens.jsonl",
        "batch_size": BATCH_SIZE,
        "grad_accum": GRAD_ACCUM,
        "steps": STEPS,
        "lr_schedule": "cosine",
        "warmup_steps": WARMUP,
        "pad_id": PAD_ID,
        "seed": SEED,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "full": {
            "lr": FULL_LR,
            "weight_decay": FULL_WD,
            "max_grad_norm": FULL_MAX_GRAD_NORM,
            "step0_loss": full["f32"][0]["loss"],
            "f32": full["f32"],
            "bf16": full["bf16"],
        },
        "lora": {
            "r": LORA_R,
            "alpha": LORA_ALPHA,
            "targets": LORA_TARGETS,
            "lr": LORA_LR,
            "weight_decay": LORA_WD,
            "max_grad_norm": LORA_MAX_GRAD_NORM,
            "step0_loss": lora["f32"][0]["loss"],
            "f32": lora["f32"],
            "bf16": lora["bf16"],
        },
    }
    (out / "goldens.json").write_text(json.dumps(goldens, indent=1, allow_nan=False) + "\n")

    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"train fixtures: {size / 1e6:.2f} MB in {out}")
    print(f"  records: lengths {[len(r['input_ids']) for r in records]}")
    for label, run in (("full", full), ("lora", lora)):
        for prec in ("f32", "bf16"):
            summarize(f"{label} {prec}", run[prec])
        print(f"  {label} bf16 vs f32: max |d loss| {spread(run['f32'], run['bf16'], 'loss'):.3g}, "
              f"max |d grad_norm| {spread(run['f32'], run['bf16'], 'grad_norm'):.3g}, clipped steps differ at "
              f"{[a['step'] for a, b in zip(run['f32'], run['bf16']) if a['clipped'] != b['clipped']]}")


if __name__ == "__main__":
    main()
