#!/usr/bin/env python3
"""make_gguf_fixtures.py: reference data for kvwire's GGUF reader, dequantizers, GGUF model loading and tokenizer.

Offline tool, run by hand (numpy, the `gguf` package >= 0.17; torch and transformers for the model and tokenizer
modes); the tests never run Python. Modes:

  dequant --smollm2 F --gemma3 G [--out tests/data/model/gguf/dequant.kwfx]
      For every type kvwire dequantizes (F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K): raw blocks
      and the values gguf.quants.dequantize gives for them. Blocks come from the real files where a type occurs there
      (SmolLM2-135M-Instruct.Q4_1.gguf: F32 Q4_1 Q8_0; gemma-3-270m-q4_k_m.gguf: F32 Q5_0 Q8_0 Q4_K Q6_K), the first
      blocks of the first tensor of that type and blocks from the middle of another, and from a seeded generator (8 more blocks, 16 for a type the files do not hold)
      (random bytes whose fp16 scales are kept finite). KWFX arrays, per type T:
        T.meta   i32 (2)      number of blocks, number of bytes
        T.blocks i32 (W)      the block bytes, padded with zeros to whole 4-byte words, read as little-endian words
        T.values f32 (N)      the dequantized values

  (more modes are added by later steps: tiny GGUF models, tokenizer, chat, real-model parity)

Usage: python3 tools/make_gguf_fixtures.py dequant --smollm2 PATH --gemma3 PATH
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kw_fixtures import write_kwfx  # noqa: E402

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEQUANT_TYPES = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]

# Byte offsets of the fp16 scales inside one block, per type (kept finite in random blocks: a random fp16 is Inf or
# NaN one time in 32, and real files hold none).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def block_geometry(qtype):
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    return block_elems, block_bytes


def real_blocks(readers, qtype, n_first=4, n_middle=4):
    """Up to n_first blocks from the start of the first tensor of qtype and n_middle from the middle of the last."""
    _, block_bytes = block_geometry(qtype)
    tensors = [t for r in readers for t in r.tensors if t.tensor_type == qtype]
    if not tensors:
        return []
    out = []
    for t, n, where in ((tensors[0], n_first, "start"), (tensors[-1], n_middle, "middle")):
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)
        n_blocks = raw.size // block_bytes
        start = 0 if where == "start" else max(0, n_blocks // 2 - n // 2)
        for b in range(start, min(n_blocks, start + n)):
            out.append(raw[b * block_bytes:(b + 1) * block_bytes].copy())
    return out


def random_blocks(qtype, rng, n):
    """n random blocks: plain floats drawn N(0, 4) for F32/F16/BF16; random bytes for the quantized types, with the
    fp16 scales' exponents capped (never Inf or NaN)."""
    _, block_bytes = block_geometry(qtype)
    out = []
    for _ in range(n):
        x = (rng.standard_normal(1) * 4).astype(np.float32)
        if qtype == T.F32:
            out.append(x.view(np.uint8).copy())
        elif qtype == T.F16:
            out.append(x.astype(np.float16).view(np.uint8).copy())
        elif qtype == T.BF16:
            out.append((x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).copy())
        else:
            b = rng.integers(0, 256, size=block_bytes, dtype=np.uint8)
            for off in F16_FIELDS[qtype]:
                b[off + 1] &= 0xBB  # exponent field never all ones
            out.append(b)
    return out


def make_dequant(args):
    readers = [gguf.GGUFReader(p) for p in (args.smollm2, args.gemma3) if p]
    rng = np.random.default_rng(20260514)
    arrays = []
    for qtype in DEQUANT_TYPES:
        real = real_blocks(readers, qtype)
        blocks = real + random_blocks(qtype, rng, 8 if real else 16)
        raw = np.concatenate(blocks)
        values = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(-1)
        block_elems, block_bytes = block_geometry(qtype)
        assert values.size == len(blocks) * block_elems and raw.size == len(blocks) * block_bytes
        assert np.all(np.isfinite(values)), qtype.name
        padded = np.concatenate([raw, np.zeros((-raw.size) % 4, dtype=np.uint8)])
        arrays.append((f"{qtype.name}.meta", np.array([len(blocks), raw.size], dtype=np.int32)))
        arrays.append((f"{qtype.name}.blocks", padded.view("<i4").astype(np.int32)))
        arrays.append((f"{qtype.name}.values", values))
        print(f"{qtype.name}: {len(blocks)} blocks ({len(real)} from the real files)")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    write_kwfx(args.out, arrays)
    print("wrote", args.out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("dequant")
    d.add_argument("--smollm2", required=True)
    d.add_argument("--gemma3", required=True)
    d.add_argument("--out", default=os.path.join(ROOT, "tests/data/model/gguf/dequant.kwfx"))
    args = ap.parse_args()
    if args.mode == "dequant":
        make_dequant(args)


if __name__ == "__main__":
    main()
