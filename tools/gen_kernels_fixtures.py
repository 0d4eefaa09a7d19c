#!/usr/bin/env python3
"""gen_kernels_fixtures.py: writes tests/data/kernels/rope_inv_freq.txt, the RoPE inverse frequencies that
transformers (4.52) computes for the configs kvwire supports, as fp32 bit patterns. test_kernels_backend_ops checks
kw__rope_inv_freq against them bit for bit. Run from the repo root: python3 tools/gen_kernels_fixtures.py
(needs torch and transformers; CI never runs it, the output is committed)."""
import struct
import sys
from types import SimpleNamespace

import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

# name, theta, head_dim, scaling (0 none, 1 llama3, 2 linear), factor, low, high, original max position
CONFIGS = [
    ("qwen3_0.6b", 1000000.0, 128, 0, 1.0, 1.0, 4.0, 8192.0),
    ("qwen2.5_0.5b", 1000000.0, 64, 0, 1.0, 1.0, 4.0, 8192.0),
    ("gemma3_local", 10000.0, 256, 0, 1.0, 1.0, 4.0, 8192.0),
    ("llama3.2_1b", 500000.0, 64, 1, 32.0, 1.0, 4.0, 8192.0),
    ("llama3.1_8b", 500000.0, 128, 1, 8.0, 1.0, 4.0, 8192.0),
    ("linear_x4", 10000.0, 64, 2, 4.0, 1.0, 4.0, 8192.0),
    ("tiny_llama3", 10000.0, 16, 1, 8.0, 1.0, 4.0, 64.0),
]


def inv_freq(theta, dim, scaling, factor, low, high, orig):
    cfg = SimpleNamespace(rope_theta=theta, head_dim=dim, hidden_size=dim, num_attention_heads=1,
                          partial_rotary_factor=1.0, max_position_embeddings=131072)
    if scaling == 0:
        cfg.rope_scaling = None
        kind = "default"
    elif scaling == 1:
        cfg.rope_scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                            "high_freq_factor": high, "original_max_position_embeddings": int(orig)}
        kind = "llama3"
    else:
        cfg.rope_scaling = {"rope_type": "linear", "factor": factor}
        kind = "linear"
    freqs, _ = ROPE_INIT_FUNCTIONS[kind](cfg, torch.device("cpu"))
    assert freqs.dtype == torch.float32 and freqs.numel() == dim // 2
    return freqs.tolist()


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/kernels/rope_inv_freq.txt"
    with open(out, "w") as f:
        for name, theta, dim, scaling, factor, low, high, orig in CONFIGS:
            vals = inv_freq(theta, dim, scaling, factor, low, high, orig)
            f.write(f"{name} {theta!r} {dim} {scaling} {factor!r} {low!r} {high!r} {orig!r}\n")
            f.write(" ".join("%08x" % struct.unpack("<I", struct.pack("<f", v))[0] for v in vals) + "\n")


if __name__ == "__main__":
    main()
