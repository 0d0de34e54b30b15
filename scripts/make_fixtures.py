#!/usr/bin/env python3
"""Builds the tiny Qwen2 test models and their goldens with HF transformers (PyTorch on CPU).

Run through `cargo xtask fixtures` (or directly: python3 scripts/make_fixtures.py --out tests/fixtures).
Needs: pip install torch transformers safetensors numpy. CI never runs this: it uses the committed output.

Each fixture directory holds an unmodified `save_pretrained` model plus:
  goldens.safetensors  logits_all [P, V] f32, hidden_states [L+1, P, H] f32 (embedding output, then
                       each decoder layer's output, captured with forward hooks), and the logits of
                       HF's own bf16 and f16 runs (logits_all_bf16 / logits_all_f16, as f32).
  goldens.json         prompt ids, greedy ids (HF generate with KV cache), and facts about the run.
"""
import argparse
import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

SEED = 20261128
PROMPT_LEN = 72
GREEDY_NEW_TOKENS = 16

BASE = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    bos_token_id=None,
    eos_token_id=None,
    use_sliding_window=False,
)

# Massive-activation fixtures: (product silu(gate)*up at position 0, down_proj weight of the spike).
# 1000 * 100 = 1e5 overflows f16 in down_proj; 1000 * 20 = 2e4 fits f16, but its square does not.
MASSIVE = {"massive-1e5": (1000.0, 100.0), "massive-2e4": (1000.0, 20.0)}
MASSIVE_CHANNEL = 7  # intermediate channel that spikes
MASSIVE_DIM = 5  # residual dimension that receives the spike

FIXTURES = {
    # name: (config overrides, dtype on disk, max_shard_size or None)
    "tied-f32-gqa": (dict(tie_word_embeddings=True), torch.float32, None),
    "untied-bf16-mqa": (dict(tie_word_embeddings=False, num_key_value_heads=1), torch.bfloat16, None),
    "sharded-f16": (dict(tie_word_embeddings=False, num_hidden_layers=3), torch.float16, "120KB"),
    "yarn-f32": (
        dict(
            tie_word_embeddings=True,
            max_position_embeddings=128,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
        torch.float32,
        None,
    ),
    "massive-1e5": (dict(tie_word_embeddings=False), torch.bfloat16, None),
    "massive-2e4": (dict(tie_word_embeddings=False), torch.bfloat16, None),
    # The model behind the text pipeline tests; scripts/make_text_fixtures.py adds its tokenizer
    # (ids 0, 1, 2 are <|endoftext|>, <|im_start|>, <|im_end|>) and chat goldens.
    "tiny-chat": (dict(tie_word_embeddings=True, eos_token_id=[2, 0]), torch.bfloat16, None),
}


def non_trivial_init(model: Qwen2ForCausalLM, gen: torch.Generator) -> None:
    """HF's default init (std 0.02, zero biases, unit norms) hides bias, norm and RoPE bugs."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)  # U(0.5, 1.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif "q_proj" in name or "k_proj" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)  # sharp, non-uniform attention
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.12)


def plant_massive_activation(model, input_ids, product, spike):
    """Makes one MLP channel of layer 0 fire at position 0 and write ~product*spike into one
    residual dimension: gate/up rows aligned with the layer-0 MLP input at position 0 so that
    silu(gate)*up ~= product there, and that channel's down_proj column carrying `spike`."""
    captured = {}
    hook = model.model.layers[0].post_attention_layernorm.register_forward_hook(
        lambda _m, _i, out: captured.setdefault("h", out[0, 0].detach().clone())
    )
    with torch.no_grad():
        model(input_ids)
    hook.remove()
    h = captured["h"]
    unit = h / h.norm()
    # silu(g) * u with g = u = t gives ~t^2 for t >> 1; solve t*t*sigmoid(t) = product
    t = math.sqrt(product)
    for _ in range(50):
        t = math.sqrt(product / (1 / (1 + math.exp(-t))))
    mlp = model.model.layers[0].mlp
    c, k = MASSIVE_CHANNEL, MASSIVE_DIM
    with torch.no_grad():
        mlp.gate_proj.weight[c] = unit * (t / h.norm())
        mlp.up_proj.weight[c] = unit * (t / h.norm())
        mlp.down_proj.weight[:, c] *= 0.1
        mlp.down_proj.weight[k, c] = spike


def finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


def first_nonfinite_module(model, input_ids):
    """Runs the model and returns the first module (in execution order) whose output holds inf/NaN."""
    found = []

    def hook(name):
        def fn(_m, _i, out):
            t = out[0] if isinstance(out, tuple) else out
            if torch.is_tensor(t) and not found and not torch.isfinite(t).all():
                found.append((name, float(t[torch.isfinite(t)].abs().max()) if torch.isfinite(t).any() else None))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    with torch.no_grad():
        logits = model(input_ids).logits
    for h in handles:
        h.remove()
    return (found[0] if found else (None, None)), bool(torch.isfinite(logits).all())


def capture_hidden_states(model, input_ids):
    states = []

    def hook(_module, _inputs, output):
        t = output[0] if isinstance(output, tuple) else output
        states.append(t[0].detach().float().clone())

    handles = [model.model.embed_tokens.register_forward_hook(hook)]
    handles += [layer.register_forward_hook(hook) for layer in model.model.layers]
    with torch.no_grad():
        logits = model(input_ids).logits[0].float()
    for h in handles:
        h.remove()
    return logits, torch.stack(states)


def attention_sharpness(model, input_ids):
    with torch.no_grad():
        out = model(input_ids, output_attentions=True)
    # mean over layers/heads/queries of the largest attention weight (uniform over t keys = 1/t)
    return float(torch.stack([a.max(-1).values.mean() for a in out.attentions]).mean())


def make(name, overrides, disk_dtype, shard, out_root: Path):
    gen = torch.Generator().manual_seed(SEED + sum(map(ord, name)))
    cfg = Qwen2Config(**{**BASE, **overrides}, attn_implementation="eager")
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(cfg).eval()
    non_trivial_init(model, gen)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    ids = torch.randint(0, cfg.vocab_size, (1, PROMPT_LEN), generator=gen)
    if name in MASSIVE:
        plant_massive_activation(model, ids, *MASSIVE[name])
    out = out_root / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.to(disk_dtype).save_pretrained(out, **kwargs)

    # Goldens come from the model as reloaded from disk, computed in f32.
    ref = Qwen2ForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    logits, hidden = capture_hidden_states(ref, ids)
    with torch.no_grad():
        greedy = ref.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=GREEDY_NEW_TOKENS,
            min_new_tokens=GREEDY_NEW_TOKENS,
            do_sample=False,
            use_cache=True,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    new_ids = greedy.sequences[0, PROMPT_LEN:].tolist()
    margins = [float((s[0].topk(2).values[0] - s[0].topk(2).values[1])) for s in greedy.scores]

    half_logits, first_inf = {}, {}
    for label, dt in (("bf16", torch.bfloat16), ("f16", torch.float16)):
        m = Qwen2ForCausalLM.from_pretrained(out, dtype=dt, attn_implementation="eager").eval()
        with torch.no_grad():
            half_logits[label] = m(ids).logits[0].float()
        (module, peak), finite = first_nonfinite_module(m, ids)
        first_inf[label] = {"first_nonfinite_module": module, "peak_finite_abs": peak, "logits_finite": finite}

    save_file(
        {
            "logits_all": logits.contiguous(),
            "hidden_states": hidden.contiguous(),
            "logits_all_bf16": half_logits["bf16"].contiguous(),
            "logits_all_f16": half_logits["f16"].contiguous(),
        },
        str(out / "goldens.safetensors"),
    )
    facts = {
        "prompt_ids": ids[0].tolist(),
        "greedy_ids": new_ids,
        "greedy_min_top2_margin": min(margins),
        "disk_dtype": str(disk_dtype).replace("torch.", ""),
        "hf_bf16_max_abs_err": float((half_logits["bf16"] - logits).abs().max()),
        # null when HF's own f16 run is not finite
        "hf_f16_max_abs_err": finite_or_none((half_logits["f16"] - logits).abs().max()),
        "hf_half_runs": first_inf,
        "max_abs_hidden_state": float(hidden.abs().max()),
        "attention_mean_max_weight": attention_sharpness(ref, ids),
        "uniform_attention_mean_max_weight": sum(1 / (t + 1) for t in range(PROMPT_LEN)) / PROMPT_LEN,
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "seed": SEED,
    }
    (out / "goldens.json").write_text(json.dumps(facts, indent=1, allow_nan=False) + "\n")
    if min(margins) < 1e-3:
        raise SystemExit(f"{name}: greedy top-2 margin {min(margins)} too small for an exact-ids test")
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{name}: {size / 1e6:.2f} MB, greedy {new_ids[:6]}..., margin {min(margins):.3g}, "
          f"peak |h| {facts['max_abs_hidden_state']:.3g}, HF f16 first inf {first_inf['f16']}, "
          f"attention sharpness {facts['attention_mean_max_weight']:.2f} "
          f"(uniform {facts['uniform_attention_mean_max_weight']:.2f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    ap.add_argument("--only", nargs="*", help="fixture names to rebuild (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    for name, (overrides, dt, shard) in FIXTURES.items():
        if not args.only or name in args.only:
            make(name, overrides, dt, shard, args.out)


if __name__ == "__main__":
    main()
