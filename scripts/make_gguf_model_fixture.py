#!/usr/bin/env python3
"""Converts tests/fixtures/tiny-chat (a Hugging Face Qwen2 directory, bf16 weights) into GGUF
files under tests/fixtures/gguf-tiny-chat/, the way llama.cpp's convert_hf_to_gguf.py does for
`Qwen2ForCausalLM` (same keys, tensor names, tensor types and tokenizer fields), with the `gguf`
package (llama.cpp's gguf-py: `pip install gguf numpy`; transformers and torch read the HF side):

- tiny-chat-bf16.gguf: `--outtype bf16` (the dtype the checkpoint is stored in): 2-D weights
  BF16, norms and biases F32.
- tiny-chat-q8_0.gguf: `--outtype q8_0`: every 2-D weight (token_embd included) Q8_0, norms
  and biases F32.
- split/tiny-chat-q8_0-0000N-of-00002.gguf: the Q8_0 model as a gguf-split set of two shards
  (GGUFWriter(split_max_tensors=...), what `--split-max-tensors` writes).

As in convert_hf_to_gguf.py, Qwen2's q/k weights are not permuted (only llama-architecture
models are), bf16 tensors go through f32 before being stored, the vocabulary comes from
AutoTokenizer (added tokens: CONTROL when special or `<|...|>`, else USER_DEFINED; ids without
a token: `[PADi]` UNUSED) and merges, special ids and the chat template from gguf.SpecialVocab.

Usage: python3 scripts/make_gguf_model_fixture.py
"""

import json
import shutil
from pathlib import Path

import gguf
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "tests" / "fixtures" / "tiny-chat"
OUT = ROOT / "tests" / "fixtures" / "gguf-tiny-chat"

# HF name suffix -> GGUF name suffix (gguf.TensorNameMap for MODEL_ARCH.QWEN2).
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf: str) -> str:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")
    assert parts[:2] == ["model", "layers"], hf
    block, module, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
    return f"blk.{block}.{LAYER_NAMES[module]}.{kind}"


def vocab(cfg: dict):
    """get_vocab_base of convert_hf_to_gguf.py."""
    tokenizer = AutoTokenizer.from_pretrained(SRC)
    vocab_size = cfg.get("vocab_size", len(tokenizer.vocab))
    reverse = {i: t for t, i in tokenizer.vocab.items()}
    added = tokenizer.get_added_vocab()
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            looks_special = token.startswith("<|") and token.endswith("|>")
            if tokenizer.added_tokens_decoder[i].special or looks_special:
                types.append(gguf.TokenType.CONTROL)
            else:
                types.append(gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(token)
    return tokens, types


def write(path: Path, outtype: str, split_max_tensors: int = 0) -> None:
    cfg = json.loads((SRC / "config.json").read_text())
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2]
    w = gguf.GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    file_type = {"bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}

    weights = load_file(SRC / "model.safetensors")
    for name in weights:
        data = weights[name].to(torch.float32).numpy()
        new_name = gguf_name(name)
        if data.ndim <= 1 or new_name.endswith("_norm.weight"):
            qtype = gguf.GGMLQuantizationType.F32
        elif outtype == "bf16":
            qtype = gguf.GGMLQuantizationType.BF16
        else:
            qtype = gguf.GGMLQuantizationType.Q8_0
        stored = gguf.quants.quantize(data, qtype)
        w.add_tensor(new_name, stored, raw_dtype=qtype)

    w.add_type(gguf.GGUFType.MODEL)
    w.add_name("Tiny Chat")
    w.add_size_label("107K")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(file_type[outtype])

    tokens, types = vocab(cfg)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(SRC, load_merges=True, n_vocab=len(tokens)).add_to_gguf(w)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.write_header_to_file(path=path)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "split").mkdir(parents=True)
    write(OUT / "tiny-chat-bf16.gguf", "bf16")
    write(OUT / "tiny-chat-q8_0.gguf", "q8_0")
    # 2 layers x 12 tensors + 2 = 26 tensors: 13 per shard.
    write(OUT / "split" / "tiny-chat-q8_0.gguf", "q8_0", split_max_tensors=13)
    for f in sorted(OUT.rglob("*.gguf")):
        print(f"{f.relative_to(ROOT)}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
