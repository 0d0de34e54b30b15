#!/usr/bin/env python3
"""Compare two GGUF files tensor by tensor (types and bytes), e.g. `qwen2 quantize`'s output
against llama.cpp's `llama-quantize` on the same weights:

    qwen2 quantize --model DIR --out ours.gguf --type q4_k_m
    python llama.cpp/convert_hf_to_gguf.py DIR --outtype bf16 --outfile model-bf16.gguf
    llama-quantize model-bf16.gguf theirs.gguf Q4_K_M
    python scripts/compare_gguf_tensors.py ours.gguf theirs.gguf

Exit status 0 when every tensor of the second file is in the first with the same type and
bytes. Needs the `gguf` and `numpy` packages.
"""
import sys

import gguf
import numpy as np


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    ours = {t.name: t for t in gguf.GGUFReader(sys.argv[1]).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(sys.argv[2]).tensors}
    same, problems = 0, []
    for name, t in theirs.items():
        u = ours.get(name)
        if u is None:
            problems.append(f"{name}: missing from {sys.argv[1]}")
        elif u.tensor_type != t.tensor_type:
            problems.append(f"{name}: {u.tensor_type.name} vs {t.tensor_type.name}")
        else:
            a = np.asarray(u.data).view(np.uint8).ravel()
            b = np.asarray(t.data).view(np.uint8).ravel()
            if a.size != b.size or not np.array_equal(a, b):
                n = int((a != b).sum()) if a.size == b.size else -1
                problems.append(f"{name} ({t.tensor_type.name}): {n} of {b.size} bytes differ")
            else:
                same += 1
    extra = sorted(set(ours) - set(theirs))
    for p in problems:
        print(p)
    print(f"{same} of {len(theirs)} tensors identical; {len(problems)} differ; "
          f"{len(extra)} only in {sys.argv[1]}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
