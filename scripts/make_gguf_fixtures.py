#!/usr/bin/env python3
"""Generates the GGUF fixtures of crates/qwen2-gguf under tests/fixtures/gguf/ with the `gguf`
package (llama.cpp's gguf-py, `pip install gguf numpy`):

- dequant/TYPE.blocks + dequant/TYPE.f32: random blocks of every supported type (f16 scale
  fields set to finite, moderate values) and gguf.quants.dequantize of them (little-endian f32).
- quant/TYPE.input.f32 + quant/TYPE.expected: inputs and gguf.quants.quantize of them, for the
  types gguf-py can quantize (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, BF16, F16); for Q4_K and Q6_K
  (which gguf-py cannot quantize) the output of llama.cpp's reference C functions, embedded
  below and compiled with the system C compiler.
- valid.gguf: a file written by gguf.GGUFWriter with every metadata value type (incl. string
  and nested arrays) and tensors of several types; index.json holds what a reader must find.
- split/model-0000N-of-00003.gguf: a split set written by GGUFWriter(split_max_tensors=2).
- index.json: what each file holds.

Usage: python3 scripts/make_gguf_fixtures.py [--check-rust-file FILE.gguf]
With --check-rust-file, reads a GGUF file (e.g. one written by the Rust GgufWriter) with
gguf.GGUFReader and prints its metadata and tensors instead of generating fixtures.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gguf"
SEED = 20240611

# Byte offsets of the f16 scale fields of each block type (all other bytes are random).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
DEQUANT_TYPES = [T.F32, T.F16, T.BF16] + list(F16_FIELDS)
QUANT_TYPES = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.BF16, T.F16]


def random_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite f16 scales: moderate values of both signs, plus zero and a subnormal."""
    scales = (rng.uniform(-2.0, 2.0, n) * 10.0 ** rng.integers(-3, 1, n)).astype(np.float16)
    specials = np.array([0.0, 6.0e-8, -3.0e-5, 1.0], dtype=np.float16)
    scales[: min(n, len(specials))] = specials[: min(n, len(specials))]
    return scales


def random_blocks(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if qtype == T.F32:
        values = (rng.standard_normal(n_blocks) * 10.0 ** rng.integers(-6, 6, n_blocks)).astype(np.float32)
        values[:4] = [np.inf, -0.0, 1.0e-40, -np.inf]  # incl. an f32 subnormal
        return values.view(np.uint8).reshape(n_blocks, 4)
    if qtype in (T.F16, T.BF16):
        bits = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint32).astype(np.uint16)
        exponent_all_ones = 0x7C00 if qtype == T.F16 else 0x7F80
        nan = ((bits & exponent_all_ones) == exponent_all_ones) & ((bits & ~np.uint16(exponent_all_ones) & 0x7FFF) != 0)
        bits[nan] ^= np.uint16(0x4000)  # no NaNs: flip an exponent bit
        bits[:3] = [exponent_all_ones, 0x8000, 0x0001]  # inf, -0, smallest subnormal
        return bits.view(np.uint8).reshape(n_blocks, 2)
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint16).astype(np.uint8)
    for offset in F16_FIELDS[qtype]:
        scales = random_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
        blocks[:, offset : offset + 2] = scales
    return blocks


def quant_input(rng: np.random.Generator, qtype: T) -> np.ndarray:
    """Random rows plus edge-case blocks: zeros, one non-zero, exact ties, tiny and huge."""
    block_size = GGML_QUANT_SIZES[qtype][0]
    size = 32 if block_size == 1 else block_size
    blocks = [rng.standard_normal(size) * s for s in (1.0, 0.02, 3.0, 1e-3, 50.0, 1e-6)]
    blocks.append(np.zeros(size))
    one = np.zeros(size)
    one[5] = -0.75
    blocks.append(one)
    ties = rng.integers(-126, 126, size) + 0.5  # x * (127 / amax) lands on .5 for Q8_0
    ties[0] = 127.0
    blocks.append(ties)
    ties4 = rng.integers(-7, 7, size) + 0.5  # ties for the 4-bit types
    ties4[0] = -8.0
    blocks.append(ties4)
    blocks.append(rng.uniform(0.5, 1.5, size))  # all positive (min > 0 for Q4_1/Q5_1)
    blocks.append(np.full(size, 0.3))  # max == min
    return np.concatenate(blocks).astype(np.float32)


def write_dequant(rng: np.random.Generator, index: dict) -> None:
    (OUT / "dequant").mkdir(parents=True)
    for qtype in DEQUANT_TYPES:
        block_size, _ = GGML_QUANT_SIZES[qtype]
        n_blocks = 256 if block_size == 1 else (16 if block_size == 32 else 6)
        blocks = random_blocks(rng, qtype, n_blocks)
        values = gguf.quants.dequantize(blocks.reshape(-1), qtype).astype(np.float32)
        assert values.size == n_blocks * block_size
        (OUT / "dequant" / f"{qtype.name}.blocks").write_bytes(blocks.tobytes())
        (OUT / "dequant" / f"{qtype.name}.f32").write_bytes(values.astype("<f4").tobytes())
        index["dequant"][qtype.name] = {"n_elements": int(values.size), "n_bytes": int(blocks.size)}


def write_quant(rng: np.random.Generator, index: dict) -> None:
    (OUT / "quant").mkdir(parents=True)
    for qtype in QUANT_TYPES:
        values = quant_input(rng, qtype)
        expected = gguf.quants.quantize(values, qtype)
        (OUT / "quant" / f"{qtype.name}.input.f32").write_bytes(values.astype("<f4").tobytes())
        (OUT / "quant" / f"{qtype.name}.expected").write_bytes(np.asarray(expected).view(np.uint8).tobytes())
        index["quant"][qtype.name] = {"n_elements": int(values.size)}

# llama.cpp's reference k-quant quantizers, transcribed from ggml/src/ggml-quants.c (MIT
# License, Copyright (c) 2023-2024 The ggml authors) - only what the Q4_K/Q6_K goldens need.
# Compiled without FMA contraction, as the Rust port computes. gguf-py cannot quantize k-quants.
KQUANT_REFERENCE_C = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#define QK_K 256
#define GROUP_MAX_EPS 1e-15f
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[QK_K/2]; } block_q4_K;
typedef struct { uint8_t ql[QK_K/2]; uint8_t qh[QK_K/4]; int8_t scales[QK_K/16]; uint16_t d; } block_q6_K;
static uint16_t fp32_to_fp16(float f) { _Float16 h = (_Float16)f; uint16_t u; memcpy(&u, &h, 2); return u; }
static float fp16_to_fp32(uint16_t u) { _Float16 h; memcpy(&h, &u, 2); return (float)h; }
static inline int nearest_int(float fval) {
    float val = fval + 12582912.f; int i; memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}
static float make_qx_quants(int n, int nmax, const float * x, int8_t * L, int rmse_type, const float * qw) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) { float ax = fabsf(x[i]); if (ax > amax) { amax = ax; max = x[i]; } }
    if (amax < GROUP_MAX_EPS) { for (int i = 0; i < n; ++i) L[i] = 0; return 0.f; }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * x[i]); l = MAX(-nmax, MIN(nmax-1, l)); L[i] = l + nmax;
        float w = qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : 1;
        sumlx += w*x[i]*l; suml2 += w*l*l;
    }
    float scale = suml2 ? sumlx/suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f*is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * x[i]); l = MAX(-nmax, MIN(nmax-1, l));
            float w = qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : 1;
            sumlx += w*x[i]*l; suml2 += w*l*l;
        }
        if (suml2 > 0 && sumlx*sumlx > best*suml2) {
            for (int i = 0; i < n; ++i) { int l = nearest_int(iscale * x[i]); L[i] = nmax + MAX(-nmax, MIN(nmax-1, l)); }
            scale = sumlx/suml2; best = scale*sumlx;
        }
    }
    return scale;
}
static float make_qkx2_quants(int n, int nmax, const float * x, const float * weights, uint8_t * L,
        float * the_min, uint8_t * Laux, float rmin, float rdelta, int nstep, int use_mad) {
    float min = x[0], max = x[0], sum_w = weights[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i]; sum_w += w; sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) { for (int i = 0; i < n; ++i) L[i] = 0; *the_min = -min; return 0.f; }
    float iscale = nmax/(max - min), scale = 1/iscale, best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale*(x[i] - min)); L[i] = MAX(0, MIN(nmax, l));
        float diff = scale * L[i] + min - x[i]; diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += weights[i] * diff;
    }
    if (nstep < 1) { *the_min = -min; return scale; }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta*is + nmax)/(max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale*(x[i] - min)); l = MAX(0, MIN(nmax, l)); Laux[i] = l;
            float w = weights[i]; sum_l += w*l; sum_l2 += w*l*l; sum_xl += w*l*x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l)/D;
            float this_min   = (sum_l2 * sum_x - sum_l * sum_xl)/D;
            if (this_min > 0) { this_min = 0; this_scale = sum_xl / sum_l2; }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i]; diff = use_mad ? fabsf(diff) : diff * diff;
                cur_error += weights[i] * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error; scale = this_scale; min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}
static inline void get_scale_min_k4(int j, const uint8_t * q, uint8_t * d, uint8_t * m) {
    if (j < 4) { *d = q[j] & 63; *m = q[j + 4] & 63; }
    else { *d = (q[j+4] & 0xF) | ((q[j-4] >> 6) << 4); *m = (q[j+4] >> 4) | ((q[j-0] >> 6) << 4); }
}
static void quantize_row_q4_K_ref(const float * x, block_q4_K * y, int64_t k) {
    const int nb = k / QK_K;
    uint8_t L[QK_K], Laux[32]; float weights[32], mins[QK_K/32], scales[QK_K/32];
    for (int i = 0; i < nb; i++) {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < QK_K/32; ++j) {
            float sum_x2 = 0;
            for (int l = 0; l < 32; ++l) sum_x2 += x[32*j + l] * x[32*j + l];
            float av_x = sqrtf(sum_x2/32);
            for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32*j + l]);
            scales[j] = make_qkx2_quants(32, 15, x + 32*j, weights, L + 32*j, &mins[j], Laux, -1.f, 0.1f, 20, 0);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        float inv_scale = max_scale > 0 ? 63.f/max_scale : 0.f;
        float inv_min   = max_min   > 0 ? 63.f/max_min   : 0.f;
        for (int j = 0; j < QK_K/32; ++j) {
            uint8_t ls = nearest_int(inv_scale*scales[j]); uint8_t lm = nearest_int(inv_min*mins[j]);
            ls = MIN(63, ls); lm = MIN(63, lm);
            if (j < 4) { y[i].scales[j] = ls; y[i].scales[j+4] = lm; }
            else {
                y[i].scales[j+4] = (ls & 0xF) | ((lm & 0xF) << 4);
                y[i].scales[j-4] |= ((ls >> 4) << 6); y[i].scales[j-0] |= ((lm >> 4) << 6);
            }
        }
        y[i].d = fp32_to_fp16(max_scale/63.f); y[i].dmin = fp32_to_fp16(max_min/63.f);
        uint8_t sc, m;
        for (int j = 0; j < QK_K/32; ++j) {
            get_scale_min_k4(j, y[i].scales, &sc, &m);
            const float d = fp16_to_fp32(y[i].d) * sc;
            if (!d) continue;
            const float dm = fp16_to_fp32(y[i].dmin) * m;
            for (int ii = 0; ii < 32; ++ii) {
                int l = nearest_int((x[32*j + ii] + dm)/d); L[32*j + ii] = MAX(0, MIN(15, l));
            }
        }
        uint8_t * q = y[i].qs;
        for (int j = 0; j < QK_K; j += 64) { for (int l = 0; l < 32; ++l) q[l] = L[j + l] | (L[j + l + 32] << 4); q += 32; }
        x += QK_K;
    }
}
static void quantize_row_q6_K_ref(const float * x, block_q6_K * y, int64_t k) {
    const int64_t nb = k / QK_K;
    int8_t L[QK_K]; float scales[QK_K/16];
    for (int i = 0; i < nb; i++) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QK_K/16; ++ib) {
            const float scale = make_qx_quants(16, 32, x + 16*ib, L + 16*ib, 1, NULL);
            scales[ib] = scale;
            const float abs_scale = fabsf(scale);
            if (abs_scale > max_abs_scale) { max_abs_scale = abs_scale; max_scale = scale; }
        }
        if (max_abs_scale < GROUP_MAX_EPS) { memset(&y[i], 0, sizeof(block_q6_K)); y[i].d = fp32_to_fp16(0.f); x += QK_K; continue; }
        float iscale = -128.f/max_scale;
        y[i].d = fp32_to_fp16(1/iscale);
        for (int ib = 0; ib < QK_K/16; ++ib) y[i].scales[ib] = MIN(127, nearest_int(iscale*scales[ib]));
        for (int j = 0; j < QK_K/16; ++j) {
            float d = fp16_to_fp32(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = nearest_int(x[16*j + ii]/d); l = MAX(-32, MIN(31, l)); L[16*j + ii] = l + 32;
            }
        }
        uint8_t * ql = y[i].ql; uint8_t * qh = y[i].qh;
        for (int j = 0; j < QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                const uint8_t q1 = L[j + l +  0] & 0xF, q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[l+ 0] = q1 | (q3 << 4); ql[l+32] = q2 | (q4 << 4);
                qh[l] = (L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6);
            }
            ql += 64; qh += 32;
        }
        x += QK_K;
    }
}
int main(int argc, char ** argv) {
    static float x[1 << 16]; static uint8_t y[1 << 16];
    size_t n = fread(x, sizeof(float), 1 << 16, stdin);
    size_t bytes;
    if (argv[1][1] == '4') { quantize_row_q4_K_ref(x, (block_q4_K *) y, n); bytes = n / QK_K * sizeof(block_q4_K); }
    else { quantize_row_q6_K_ref(x, (block_q6_K *) y, n); bytes = n / QK_K * sizeof(block_q6_K); }
    fwrite(y, 1, bytes, stdout);
    return 0;
}
"""


def k_quant_input(rng: np.random.Generator) -> np.ndarray:
    """256-blocks: normal at several scales, heavy tails, all-positive, zeros, constants."""
    blocks = [rng.standard_normal(256) * s for s in (1.0, 0.02, 30.0, 1e-3, 1e-7)]
    blocks.append(rng.standard_t(2, 256) * 0.05)  # outliers, as in real weights
    blocks.append(rng.uniform(0.5, 1.5, 256))
    blocks.append(-rng.uniform(0.0, 2.0, 256))
    blocks.append(np.zeros(256))
    blocks.append(np.full(256, 0.3))
    spike = np.zeros(256)
    spike[17] = 4.0
    blocks.append(spike)
    return np.concatenate(blocks).astype(np.float32)


def write_k_quant_goldens(rng: np.random.Generator, index: dict) -> None:
    """Q4_K/Q6_K goldens from llama.cpp's C reference (needs a C compiler)."""
    import subprocess
    import tempfile
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("a C compiler (cc) is needed for the Q4_K/Q6_K goldens")
    values = k_quant_input(rng)
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp) / "kquant_ref.c", Path(tmp) / "kquant_ref"
        source.write_text(KQUANT_REFERENCE_C)
        subprocess.run([compiler, "-O2", "-ffp-contract=off", "-o", str(binary), str(source), "-lm"], check=True)
        for qtype in (T.Q4_K, T.Q6_K):
            out = subprocess.run([str(binary), qtype.name], input=values.astype("<f4").tobytes(),
                                 capture_output=True, check=True).stdout
            assert len(out) == values.size // 256 * GGML_QUANT_SIZES[qtype][1]
            (OUT / "quant" / f"{qtype.name}.input.f32").write_bytes(values.astype("<f4").tobytes())
            (OUT / "quant" / f"{qtype.name}.expected").write_bytes(out)
            index["quant"][qtype.name] = {"n_elements": int(values.size), "source": "llama.cpp C reference"}


def f32_bits(values: np.ndarray) -> list[int]:
    return [int(b) for b in np.asarray(values, dtype=np.float32).view(np.uint32).reshape(-1)]


def tensor_records(rng: np.random.Generator) -> list[tuple[str, T, tuple[int, ...], np.ndarray]]:
    """(name, type, row-major shape, stored array) for the valid file's tensors."""
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    f16 = rng.standard_normal((2, 4)).astype(np.float16)
    q8 = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), T.Q8_0)
    q4k = random_blocks(rng, T.Q4_K, 2).reshape(2, -1)
    q6k = random_blocks(rng, T.Q6_K, 1).reshape(1, -1)
    bf16 = gguf.quants.quantize(rng.standard_normal((2, 3, 4)).astype(np.float32), T.BF16)
    i32 = np.arange(-3, 3, dtype=np.int32)
    return [
        ("token_embd.weight", T.F32, (3, 5), f32),
        ("blk.0.attn_norm.weight", T.F16, (2, 4), f16),
        ("blk.0.attn_q.weight", T.Q8_0, (2, 64), q8),
        ("blk.0.ffn_up.weight", T.Q4_K, (2, 256), q4k),
        ("output.weight", T.Q6_K, (1, 256), q6k),
        ("blk.0.bf16_3d", T.BF16, (2, 3, 4), bf16),
        ("positions", T.I32, (6,), i32),
    ]


METADATA = [
    ("test.u8", "UINT8", 200), ("test.i8", "INT8", -100), ("test.u16", "UINT16", 60000),
    ("test.i16", "INT16", -30000), ("test.u32", "UINT32", 4000000000), ("test.i32", "INT32", -2000000000),
    ("test.f32", "FLOAT32", 0.1), ("test.bool", "BOOL", True), ("test.string", "STRING", "héllo, GGUF"),
    ("test.u64", "UINT64", 2**63 + 5), ("test.i64", "INT64", -(2**62)), ("test.f64", "FLOAT64", 0.1),
    ("test.array_i32", "ARRAY", [1, -2, 3]), ("test.array_f32", "ARRAY", [0.5, -1.25, 3.0]),
    ("test.array_str", "ARRAY", ["a", "", "ünïcode", "<|im_end|>"]),
    ("test.array_nested", "ARRAY", [[1, 2], [3], ["x", "y"]]), ("test.array_bool", "ARRAY", [True, False]),
    ("qwen2.context_length", "UINT32", 32768), ("qwen2.block_count", "INT32", 24),
]


def write_valid(rng: np.random.Generator, index: dict) -> None:
    path = OUT / "valid.gguf"
    writer = gguf.GGUFWriter(str(path), arch="qwen2")
    writer.add_custom_alignment(64)
    for key, kind, value in METADATA:
        if kind == "ARRAY":
            sub = {"test.array_i32": gguf.GGUFValueType.INT32, "test.array_f32": gguf.GGUFValueType.FLOAT32}.get(key)
            writer.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=sub)
        else:
            writer.add_key_value(key, value, gguf.GGUFValueType[kind])
    tensors = tensor_records(rng)
    for name, qtype, shape, data in tensors:
        # Quantized data is passed as its byte array; gguf-py derives the element shape.
        raw_dtype = None if qtype in (T.F32, T.F16, T.I32) else qtype
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader = gguf.GGUFReader(str(path))
    records = []
    for t in reader.tensors:
        record = {"name": t.name, "type": t.tensor_type.name, "dims": [int(d) for d in t.shape],
                  "offset": int(t.data_offset - reader.data_offset)}
        if t.tensor_type != T.I32:
            record["f32_bits"] = f32_bits(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type))
        else:
            record["i32"] = [int(v) for v in np.asarray(t.data).reshape(-1)]
        records.append(record)
    index["valid"] = {
        "file": "valid.gguf", "alignment": 64, "version": 3,
        "metadata_keys": [f.name for f in reader.fields.values() if not f.name.startswith("GGUF.")],
        "tensors": records,
    }


def write_split(rng: np.random.Generator, index: dict) -> None:
    directory = OUT / "split"
    directory.mkdir(parents=True)
    writer = gguf.GGUFWriter(str(directory / "model.gguf"), arch="qwen2", split_max_tensors=2)
    writer.add_uint32("qwen2.block_count", 1)
    names = []
    for i in range(5):
        data = rng.standard_normal((2, 32)).astype(np.float32)
        name = f"blk.{i}.weight"
        writer.add_tensor(name, gguf.quants.quantize(data, T.Q8_0), raw_dtype=T.Q8_0)
        names.append(name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    files = sorted(p.name for p in directory.iterdir())
    expected = {}
    for name in names:
        for f in files:
            reader = gguf.GGUFReader(str(directory / f))
            for t in reader.tensors:
                if t.name == name:
                    expected[name] = {"file": f, "f32_bits": f32_bits(gguf.quants.dequantize(np.asarray(t.data), T.Q8_0))}
    index["split"] = {"files": files, "tensors": expected}


def check_file(path: str) -> None:
    reader = gguf.GGUFReader(path)
    for field in reader.fields.values():
        kind = [gguf.GGUFValueType(t).name for t in field.types]
        print(f"{field.name}: {kind} = {field.contents()!r}"[:200])
    for t in reader.tensors:
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        print(f"tensor {t.name}: {t.tensor_type.name} dims={list(map(int, t.shape))} first={np.asarray(values).reshape(-1)[:4]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-rust-file", help="read a GGUF file with gguf.GGUFReader and print it")
    args = parser.parse_args()
    if args.check_rust_file:
        check_file(args.check_rust_file)
        return
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    index = {"gguf_py_version": getattr(gguf, "__version__", None) or _gguf_version(), "dequant": {}, "quant": {}}
    write_dequant(rng, index)
    write_quant(rng, index)
    write_k_quant_goldens(rng, index)
    write_valid(rng, index)
    write_split(rng, index)
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT.relative_to(ROOT)} ({total} bytes)")


def _gguf_version() -> str:
    from importlib.metadata import version
    return version("gguf")


if __name__ == "__main__":
    sys.exit(main())
