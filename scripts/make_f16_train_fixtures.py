#!/usr/bin/env python3
"""Builds tests/fixtures/train/f16_scaled_goldens.json: the `f16-scaled` training policy (f16
forward/backward with dynamic loss scaling) as a PyTorch reference (CPU).

Run: python3 scripts/make_f16_train_fixtures.py --out tests/fixtures
     (--dry-run: only the checks and the printed trajectory; writes nothing.)
Needs: torch transformers peft safetensors numpy (see scripts/make_train_fixtures.py, whose data,
batching, loss normalisation, optimizer, schedule and clipping this reuses). It reads the committed
base model tests/fixtures/tied-f32-gqa and tests/fixtures/train/tokens.jsonl. CI never runs this.

The run is full fine-tuning of tied-f32-gqa, 20 optimizer steps, batch 2 right-padded, grad accum 2,
loss = sum-reduced CE / (label tokens of the whole step), AdamW lr 1e-3 wd 0.1, cosine schedule with
3 warm-up steps, clip_grad_norm_ 22.0 -- exactly as goldens.json "full" -- under this policy:

  - f32 master parameters (the HF model's own parameters) and f32 AdamW state.
  - a functional Qwen2 forward (no autocast) with explicit casts, c16 = .to(float16), c32 = .float(),
    on flattened rows [B*S, hidden] outside attention:
      x = embed_w[ids]                                  (f32 residual stream throughout)
      rmsnorm(x, w) = c16(xf * rsqrt(mean(xf^2) + eps)) * c16(w)          (f16 product)
      q/k/v = h16 @ c16(W).T + c16(b)                   (f16; matmul then bias add, two roundings)
      RoPE on c32(q), c32(k) (f32 cos/sin, half-split rotate_half)
      scores = (q @ k.T) * 1/sqrt(head_dim) + mask      (f32; causal + padded keys -inf; GQA)
      probs = softmax(scores) in f32; out = c16(probs) @ v16 -> f16, heads merged
      x = x + c32(out) @ Wo.T                           (f32 o_proj)
      h = rmsnorm(x, post_ln) (f16); act = silu(h @ c16(Wg).T) * (h @ c16(Wu).T)   (f16)
      x = x + c32(act) @ Wd.T                           (f32 down_proj)
      logits = c32(rmsnorm(x, norm) @ c16(embed_w).T)   (tied head in f16)
  - torch.amp.GradScaler("cpu", INIT_SCALE, growth 2, backoff 0.5, growth_interval 3): per micro-
    batch scaler.scale(loss_i).backward(); then unscale_, clip_grad_norm_ (on the unscaled grads),
    scaler.step, scaler.update. A step whose unscaled gradients hold inf/NaN is skipped: no AdamW
    update (its step count and moments untouched) and -- like HF Trainer's
    `if not optimizer_step_was_skipped` -- no lr-scheduler step. The data still advances.

On CPU torch's f16 matmul accumulates in f32 and rounds the result once (4096 ones sum to 4096, not
2048; results differ from round(f32 matmul) only by an ulp here and there, from summation order).

Output f16_scaled_goldens.json: per step {step, loss (unscaled step loss), scale (used for this
step's backward), skipped, lr (the lr the optimizer holds: used if the step is applied), grad_norm
(after unscaling; the repr string of the non-finite value when skipped)}, plus the same 20 steps
with the functional forward in f32 (no casts, no scaler; checked against goldens.json full/f32):
f32_losses, max_loss_spread_vs_f32 (max |f16-scaled - f32| loss over the applied steps: mostly the
lag from the skipped steps, not rounding; at equal weights -- steps 0..4 here -- the two differ by
< 0.01), and f16_grad_peak_ratio per step (see INIT_SCALE): how far each step is from flipping.
"""
import argparse
import json
import math
from pathlib import Path

import peft
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
import transformers
from transformers import get_scheduler

from make_train_fixtures import (
    BASE_NAME,
    BATCH_SIZE,
    FULL_LR,
    FULL_MAX_GRAD_NORM,
    FULL_WD,
    GRAD_ACCUM,
    IGNORE,
    SEED,
    STEPS,
    WARMUP,
    collate,
    load_base,
    make_records,
    n_label_tokens,
    step_batches,
)

# 1.75 * 2**18, not a power of two, so that no step sits near the f16 overflow edge. What decides a
# skip is the peak |f16 value| in the scaled backward (f16_grad_peak_ratio: that peak / 65504; a
# step overflows iff it is > 1). At the initial weights it is 1.014 * scale / 2**16 (batch A) and
# 0.984 * scale / 2**16 (batch B), so with power-of-two scales the first finite step would be decided
# by 1-2%. With this INIT: steps 0, 1, 2 overflow (458752 -> 229376 -> 114688), step 3 is the first
# applied one (57344, lr 0: the schedule has not moved yet); every 3 good steps the scale grows to
# 114688 and that step overflows again: skipped 0, 1, 2, 6, 10, 14, 18. Every step is >= 11% away
# from the edge (peaks: applied <= 0.887, skipped >= 1.14).
INIT_SCALE = 1.75 * 2.0**18
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 3


# ---------------------------------------------------------------------------------------------
# functional forward


def rotate_half(t):
    half = t.shape[-1] // 2
    return torch.cat((-t[..., half:], t[..., :half]), dim=-1)


def rope_tables(model, seq):
    """cos/sin [seq, head_dim] in f32, as transformers' Qwen2RotaryEmbedding (default rope)."""
    rot = model.model.rotary_emb
    inv_freq = rot.inv_freq.float()
    pos = torch.arange(seq, dtype=torch.float32)
    freqs = (inv_freq[:, None] @ pos[None, :]).transpose(0, 1)  # [seq, head_dim / 2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * rot.attention_scaling, emb.sin() * rot.attention_scaling


def forward_logits(model, ids, mask, f16, tap=None):
    """Logits [B, S, vocab] in f32. f16=False: the same graph with every cast an identity.

    tap(site, tensor) -> tensor, if given, sees the activation at each observation site (HF module
    paths, as crates/qwen2-core/src/observe.rs names them) and returns the tensor the graph goes on
    with; grad_probe uses it to hook the gradients. Without it the graph is unchanged."""
    if tap is None:
        tap = lambda _site, t: t  # noqa: E731
    if f16:
        c16 = lambda t: t.to(torch.float16)  # noqa: E731
    else:
        c16 = lambda t: t  # noqa: E731
    c32 = lambda t: t.float()  # noqa: E731  (identity on f32 tensors)
    cfg = model.config
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    rep, eps = nh // nkv, cfg.rms_norm_eps
    b, s = ids.shape
    m = model.model
    embed_w = m.embed_tokens.weight

    def rmsnorm(x, w):
        xf = c32(x)
        n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return c16(n) * c16(w)

    def lin16(h, lin):
        y = h @ c16(lin.weight).T
        return y + c16(lin.bias) if lin.bias is not None else y

    cos, sin = rope_tables(model, s)
    keep = torch.tril(torch.ones(s, s, dtype=torch.bool))[None, None] & mask.bool()[:, None, None, :]
    add_mask = torch.zeros(b, 1, s, s, dtype=torch.float32).masked_fill(~keep, float("-inf"))
    scaling = 1.0 / math.sqrt(hd)

    x = tap("model.embed_tokens", F.embedding(ids, embed_w).reshape(b * s, -1))  # f32
    for i, layer in enumerate(m.layers):
        pre = f"model.layers.{i}"
        at = layer.self_attn
        h = tap(f"{pre}.input_layernorm", rmsnorm(x, layer.input_layernorm.weight))
        q = lin16(h, at.q_proj)
        k = lin16(h, at.k_proj)
        v = lin16(h, at.v_proj)
        q = c32(q).view(b, s, nh, hd).transpose(1, 2)
        k = c32(k).view(b, s, nkv, hd).transpose(1, 2)
        v = v.view(b, s, nkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(rep, dim=1)  # kv head j serves query heads j*rep..(j+1)*rep
        v = v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)) * scaling + add_mask
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        out = c16(probs) @ c16(v)  # [b, nh, s, hd]
        out = out.transpose(1, 2).reshape(b * s, nh * hd)
        attn_out = tap(f"{pre}.self_attn.o_proj", c32(out) @ at.o_proj.weight.T)  # f32 o_proj
        x = tap(f"{pre}.residual_add.self_attn", x + attn_out)
        mlp = layer.mlp
        h = tap(f"{pre}.post_attention_layernorm", rmsnorm(x, layer.post_attention_layernorm.weight))
        gate = tap(f"{pre}.mlp.gate_proj", h @ c16(mlp.gate_proj.weight).T)
        up = tap(f"{pre}.mlp.up_proj", h @ c16(mlp.up_proj.weight).T)
        act = F.silu(gate) * up
        down = tap(f"{pre}.mlp.down_proj", c32(act) @ mlp.down_proj.weight.T)  # f32 down_proj
        x = tap(pre, x + down)
    h = tap("model.norm", rmsnorm(x, m.norm.weight))
    logits16 = h @ c16(embed_w).T
    return tap("lm_head", c32(logits16).view(b, s, -1))


def micro_loss(model, ids, labels, mask, n_items, f16, tap=None):
    logits = forward_logits(model, ids, mask, f16, tap=tap)
    ce = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        reduction="sum",
        ignore_index=IGNORE,
    )
    return ce / n_items


def check_forward(model, records):
    """The functional forward in f32 against HF's eager forward on padded batches."""
    worst = 0.0
    with torch.no_grad():
        for i in range(0, len(records), 4):
            ids, _, mask = collate(records[i:i + 4])
            ref = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            got = forward_logits(model, ids, mask, f16=False)
            worst = max(worst, float((ref - got).abs().max()))
            got16 = forward_logits(model, ids, mask, f16=True)
            d16 = float(((ref - got16).abs() * mask[..., None]).max())
    if worst > 1e-4:
        raise SystemExit(f"functional f32 forward differs from HF by {worst:.3g}")
    print(f"  functional f32 forward vs HF logits: max |d| {worst:.3g}; f16 forward (valid rows) {d16:.3g}")


# ---------------------------------------------------------------------------------------------
# training


def nonfinite_repr(v):
    return v if math.isfinite(v) else repr(v)


def train(model, records, f16_scaled, init_scale=INIT_SCALE, peaks=None):
    params = [p for p in model.parameters() if p.requires_grad]  # tied head counted once
    opt = torch.optim.AdamW(params, lr=FULL_LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=FULL_WD)
    sched = get_scheduler("cosine", opt, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    scaler = None
    if f16_scaled:
        scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_factor=GROWTH_FACTOR,
                                      backoff_factor=BACKOFF_FACTOR, growth_interval=GROWTH_INTERVAL)
    log = []
    batches = step_batches(records)
    for step in range(STEPS):
        micro = next(batches)
        n_items = n_label_tokens(micro)
        loss = 0.0
        scale = scaler.get_scale() if scaler else None
        if peaks is not None:
            peaks.append(f16_grad_peak_ratio(model, micro, n_items, scale))
        for ids, labels, mask in micro:
            li = micro_loss(model, ids, labels, mask, n_items, f16=f16_scaled)
            (scaler.scale(li) if scaler else li).backward()
            loss += float(li.detach())
        if scaler:
            scaler.unscale_(opt)
        norm = float(torch.nn.utils.clip_grad_norm_(params, FULL_MAX_GRAD_NORM))
        cur_lr = float(opt.param_groups[0]["lr"])
        skipped = False
        if scaler:
            found_inf = sum(v.item() for v in scaler._found_inf_per_device(opt).values())
            scaler.step(opt)
            scaler.update()
            skipped = found_inf > 0
            assert skipped == (scaler.get_scale() < scale), (step, found_inf, scale, scaler.get_scale())
            assert skipped == (not math.isfinite(norm)), (step, found_inf, norm)
            if peaks is not None:
                assert skipped == (peaks[-1] > 1.0), (step, peaks[-1])
        else:
            opt.step()
        if not skipped:
            sched.step()
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(loss):
            raise SystemExit(f"non-finite loss at step {step}: {loss}")
        rec = {"step": step, "loss": loss}
        if scaler:
            rec.update(scale=scale, skipped=skipped)
        rec.update(lr=cur_lr, grad_norm=nonfinite_repr(norm))
        log.append(rec)
    return log


class F16Peak(TorchDispatchMode):
    """Records the largest |value| of the f16 tensors the ops produce (and whether any is
    non-finite)."""

    def __init__(self):
        super().__init__()
        self.peak, self.nonfinite = 0.0, False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.dtype == torch.float16 and o.numel():
                if not bool(torch.isfinite(o).all()):
                    self.nonfinite = True
                else:
                    self.peak = max(self.peak, float(o.abs().max()))
        return out


def f16_grad_peak_ratio(model, micro, n_items, scale):
    """The peak |f16 value| of the step's backward at `scale` over the f16 max 65504, measured at
    scale / 16 (exact: powers of two commute with the roundings, barring underflow, which cannot
    reach the peak). > 1 means the backward at `scale` overflows. Leaves model's grads untouched."""
    saved = {p: p.grad for p in model.parameters()}
    for p in saved:
        p.grad = None
    rec = F16Peak()
    for ids, labels, mask in micro:
        li = micro_loss(model, ids, labels, mask, n_items, f16=True)
        with rec:
            (li * (scale / 16)).backward()
    assert not rec.nonfinite, "overflow at scale / 16"
    for p, g in saved.items():
        p.grad = g
    return rec.peak * 16 / 65504


# ---------------------------------------------------------------------------------------------
# backward anomaly: per-site gradient statistics of one micro-batch


def site_names(n_layers):
    """The observation sites in forward order (crates/qwen2-core/src/observe.rs names)."""
    names = ["model.embed_tokens"]
    for i in range(n_layers):
        pre = f"model.layers.{i}"
        names += [f"{pre}.input_layernorm", f"{pre}.self_attn.o_proj", f"{pre}.residual_add.self_attn",
                  f"{pre}.post_attention_layernorm", f"{pre}.mlp.gate_proj", f"{pre}.mlp.up_proj",
                  f"{pre}.mlp.down_proj", pre]
    return names + ["model.norm", "lm_head"]


def grad_stats(site, g):
    finite = torch.isfinite(g)
    n_finite = int(finite.sum())
    return {
        "site": site,
        "dtype": str(g.dtype).removeprefix("torch."),
        "nan": int(torch.isnan(g).sum()),
        "inf": int(torch.isinf(g).sum()),
        # null when the gradient holds no finite value at all
        "max_abs_finite": float(g[finite].abs().max()) if n_finite else None,
        "zeros": int((g == 0).sum()),
        "numel": g.numel(),
    }


def grad_probe(base_dir, records, scale, f16=True, step=0, micro_batch=0):
    """Backward of `scaler.scale(loss)` for one micro-batch of `step` at the initial weights (the
    weights of every step before the first applied one), with a Tensor.register_hook on the
    activation at every site. Each site's tensor is hooked once; its hook fires once, with the
    gradient summed over all its uses. Returns the per-site records in firing (backward) order."""
    assert step == 0, "the weights for a later step would need the training run up to it"
    model = load_base(base_dir)
    batches = step_batches(records)
    for _ in range(step + 1):
        micro = next(batches)
    n_items = n_label_tokens(micro)
    ids, labels, mask = micro[micro_batch]
    fired = []

    def tap(site, t):
        assert t.requires_grad, site
        t.register_hook(lambda g: fired.append(grad_stats(site, g)))
        return t

    li = micro_loss(model, ids, labels, mask, n_items, f16=f16, tap=tap)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_factor=GROWTH_FACTOR,
                                  backoff_factor=BACKOFF_FACTOR, growth_interval=GROWTH_INTERVAL)
    scaler.scale(li).backward()  # loss * scale, as in train()
    names = site_names(model.config.num_hidden_layers)
    order = [r["site"] for r in fired]
    assert sorted(order) == sorted(names), ("every site's hook must fire exactly once", order)
    return fired


def module_hook_probe(base_dir, records, scale, step=0, micro_batch=0):
    """The same backward as grad_probe, watched the way torch users watch modules: HF's own
    Qwen2ForCausalLM, each module at an observation site given a register_full_backward_hook that
    records its grad_output. The f16-scaled casts go in by replacing those modules' forward (and the
    attention's, which also applies the mask and RoPE as forward_logits does); the module tree, the
    decoder layers' residual adds and the hooks are HF's and torch's. Returns the per-module records
    in firing (backward) order; residual_add.self_attn is no module, so it has no hook here."""
    assert step == 0, "the weights for a later step would need the training run up to it"
    model = load_base(base_dir)
    micro = next(step_batches(records))
    n_items = n_label_tokens(micro)
    ids, labels, mask = micro[micro_batch]
    cfg = model.config
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // nh
    b, s = ids.shape
    c16 = lambda t: t.to(torch.float16)  # noqa: E731
    cos, sin = rope_tables(model, s)
    keep = torch.tril(torch.ones(s, s, dtype=torch.bool))[None, None] & mask.bool()[:, None, None, :]
    add_mask = torch.zeros(b, 1, s, s).masked_fill(~keep, float("-inf"))
    embed_w = model.model.embed_tokens.weight

    def norm_forward(norm):
        def forward(x):
            xf = x.float()
            return c16(xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)) * c16(norm.weight)
        return forward

    def f16_linear(lin):
        def forward(h):
            y = h @ c16(lin.weight).T
            return y + c16(lin.bias) if lin.bias is not None else y
        return forward

    def f32_linear(lin):
        return lambda h: h.float() @ lin.weight.T

    def attention(at):
        def forward(hidden_states, *args, **kwargs):
            q = at.q_proj(hidden_states).float().view(b, s, nh, hd).transpose(1, 2)
            k = at.k_proj(hidden_states).float().view(b, s, nkv, hd).transpose(1, 2)
            v = at.v_proj(hidden_states).view(b, s, nkv, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = (k * cos + rotate_half(k) * sin).repeat_interleave(nh // nkv, dim=1)
            v = v.repeat_interleave(nh // nkv, dim=1)
            probs = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(hd) + add_mask, dim=-1)
            out = (c16(probs) @ c16(v)).transpose(1, 2).reshape(b, s, nh * hd)
            return at.o_proj(out), None
        return forward

    for layer in model.model.layers:
        at, mlp = layer.self_attn, layer.mlp
        for lin in (at.q_proj, at.k_proj, at.v_proj, mlp.gate_proj, mlp.up_proj):
            lin.forward = f16_linear(lin)
        at.o_proj.forward = f32_linear(at.o_proj)
        mlp.down_proj.forward = f32_linear(mlp.down_proj)
        at.forward = attention(at)
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.forward = norm_forward(norm)
    model.model.norm.forward = norm_forward(model.model.norm)
    model.lm_head.forward = lambda h: (h @ c16(embed_w).T).float()

    fired = []
    sites = set(site_names(cfg.num_hidden_layers))
    hooked = []
    for name, module in model.named_modules():
        if name in sites:
            module.register_full_backward_hook(
                lambda _m, _gi, go, name=name: fired.append(grad_stats(name, go[0])))
            hooked.append(name)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    check = micro_loss(model, ids, labels, mask, n_items, f16=True)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                         reduction="sum", ignore_index=IGNORE)
    li = ce / n_items
    li_, check_ = float(li.detach()), float(check.detach())
    assert abs(li_ - check_) <= 1e-6 * abs(check_), (li_, check_)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_factor=GROWTH_FACTOR,
                                  backoff_factor=BACKOFF_FACTOR, growth_interval=GROWTH_INTERVAL)
    scaler.scale(li).backward()
    assert sorted(r["site"] for r in fired) == sorted(hooked), ("every hook fires once", fired)
    return fired


def anomaly_report(sites, step, scale, micro_batch):
    first = None
    peak = 0.0
    for r in sites:
        if r["nan"] or r["inf"]:
            first = {"site": r["site"], "dtype": r["dtype"], "nan": r["nan"], "inf": r["inf"],
                     "peak_before": peak}
            break
        peak = max(peak, r["max_abs_finite"])
    return {
        "step": step,
        "scale": scale,
        "micro_batch": micro_batch,
        "order": [r["site"] for r in sites],
        "first_nonfinite": first,
        "sites": sites,
    }


def zeros_fraction(sites):
    return {r["site"]: r["zeros"] / r["numel"] for r in sites}


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    ap.add_argument("--dry-run", action="store_true", help="only run the checks and print; writes nothing")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    base_dir = args.out / BASE_NAME
    train_dir = args.out / "train"
    records = [json.loads(line) for line in (train_dir / "tokens.jsonl").read_text().splitlines() if line]
    assert records == make_records(), "tokens.jsonl is not what make_train_fixtures.py makes"
    goldens = json.loads((train_dir / "goldens.json").read_text())
    assert goldens["batch_size"] == BATCH_SIZE and goldens["grad_accum"] == GRAD_ACCUM
    assert goldens["steps"] == STEPS

    check_forward(load_base(base_dir), records)

    # --- f32: the functional forward without casts must reproduce goldens.json full/f32 --------
    f32 = train(load_base(base_dir), records, f16_scaled=False)
    ref = goldens["full"]["f32"]
    rel = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(f32, ref))
    print(f"  f32 functional vs goldens.json full/f32: max rel |d loss| {rel:.3g}")
    if rel > 1e-5:
        raise SystemExit("the functional f32 run does not reproduce goldens.json full/f32")

    # --- f16-scaled ------------------------------------------------------------------------------
    peaks = []
    f16 = train(load_base(base_dir), records, f16_scaled=True, peaks=peaks)
    applied = [r for r in f16 if not r["skipped"]]
    spread = max(abs(r["loss"] - f32[r["step"]]["loss"]) for r in applied)
    print(f"  f16-scaled: skipped {[r['step'] for r in f16 if r['skipped']]}, "
          f"max |d loss| vs f32 over applied steps {spread:.3g}; f16 peak / 65504: applied <= "
          f"{max(q for q, r in zip(peaks, f16) if not r['skipped']):.3f}, skipped >= "
          f"{min(q for q, r in zip(peaks, f16) if r['skipped']):.3f}")
    for r, a, q in zip(f16, f32, peaks):
        print(f"    step {r['step']:2d} scale {r['scale']:6.0f} (peak {q:.3f}) "
              f"{'SKIP' if r['skipped'] else 'ok  '} loss {r['loss']:9.5f} (f32 {a['loss']:9.5f}) "
              f"lr {r['lr']:.6g} norm {r['grad_norm'] if isinstance(r['grad_norm'], str) else round(r['grad_norm'], 4)}")

    # --- backward anomaly: step 0 (scale INIT_SCALE, overflows), micro-batch 0 -------------------
    anomaly = anomaly_report(grad_probe(base_dir, records, INIT_SCALE), 0, INIT_SCALE, 0)
    assert f16[0]["scale"] == INIT_SCALE and f16[0]["skipped"]
    first = anomaly["first_nonfinite"]
    if first is None:
        raise SystemExit("step 0, micro-batch 0 at the initial scale did not overflow")
    modules = module_hook_probe(base_dir, records, INIT_SCALE)
    first_module = next((r for r in modules if r["nan"] or r["inf"]), None)
    anomaly["module_hooks"] = {
        "hook": "register_full_backward_hook (grad_output) on HF's modules",
        "order": [r["site"] for r in modules],
        "first_nonfinite": first_module and {k: first_module[k] for k in ("site", "dtype", "nan", "inf")},
    }
    print(f"  register_full_backward_hook on HF's modules: first non-finite grad_output at "
          f"{first_module and first_module['site']} (tensor hooks: {first['site']})")
    if first_module is None or first_module["site"] != first["site"]:
        raise SystemExit("module hooks and tensor hooks disagree on the first non-finite site")
    unscaled = grad_probe(base_dir, records, 1.0)
    f32_zeros = zeros_fraction(grad_probe(base_dir, records, 1.0, f16=False))
    anomaly_unscaled = {
        "step": 0,
        "scale": 1.0,
        "micro_batch": 0,
        "zeros_fraction_by_site": zeros_fraction(unscaled),
        "all_finite": not any(r["nan"] or r["inf"] for r in unscaled),
        # the same backward with the f32 functional forward (no casts): the zeros that are not
        # f16 underflow (ignored label rows, the last position, padded keys)
        "f32_zeros_fraction_by_site": f32_zeros,
        "sites": unscaled,
    }
    print(f"  backward anomaly, step 0 micro-batch 0, scale {INIT_SCALE:.0f}: first non-finite at "
          f"{first['site']} ({first['dtype']}: {first['nan']} NaN, {first['inf']} inf; finite peak "
          f"before it {first['peak_before']:.6g})")
    for r in anomaly["sites"]:
        print(f"    {r['site']:44s} {r['dtype']:8s} nan {r['nan']:6d} inf {r['inf']:6d} "
              f"max {r['max_abs_finite'] if r['max_abs_finite'] is None else round(r['max_abs_finite'], 4)} "
              f"zeros {r['zeros']}/{r['numel']}")
    print(f"  scale 1: all finite {anomaly_unscaled['all_finite']}; zero fraction f16 (f32):")
    for r in unscaled:
        print(f"    {r['site']:44s} {r['dtype']:8s} {r['zeros'] / r['numel']:.4f} ({f32_zeros[r['site']]:.4f}) "
              f"max {r['max_abs_finite']:.4g}")
    if args.dry_run:
        return

    out = {
        "base": BASE_NAME,
        "data": "tokens.jsonl",
        "batch_size": BATCH_SIZE,
        "grad_accum": GRAD_ACCUM,
        "steps": STEPS,
        "lr": FULL_LR,
        "weight_decay": FULL_WD,
        "max_grad_norm": FULL_MAX_GRAD_NORM,
        "lr_schedule": "cosine",
        "warmup_steps": WARMUP,
        "scaler": {
            "init_scale": INIT_SCALE,
            "growth_factor": GROWTH_FACTOR,
            "backoff_factor": BACKOFF_FACTOR,
            "growth_interval": GROWTH_INTERVAL,
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "f16_scaled": f16,
        "f32_losses": [r["loss"] for r in f32],
        "max_loss_spread_vs_f32": spread,
        "f16_grad_peak_ratio": [round(q, 4) for q in peaks],
        "anomaly": anomaly,
        "anomaly_unscaled": anomaly_unscaled,
    }
    path = train_dir / "f16_scaled_goldens.json"
    path.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
