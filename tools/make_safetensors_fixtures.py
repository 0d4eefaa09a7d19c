#!/usr/bin/env python3
"""make_safetensors_fixtures.py: writes the safetensors files that tests/model/test_safetensors.c reads, with the
reference Python writers (safetensors 0.5/0.6 save_file and transformers save_pretrained), into
tests/data/model/safetensors/:

  mixed.safetensors       F32/BF16/F16 tensors of 0-4 dims (a scalar, a zero-size one), __metadata__ with 2 keys.
                          Values are closed-form, so the C test recomputes them: element i of tensor "t_<name>" is
                          (i % 13 - 6) * 0.25 + k where k is the tensor's index in SPECS (exact in every dtype).
  sharded/                a tiny random Qwen3 saved by transformers with max_shard_size=12KB (several shards and
                          model.safetensors.index.json).
  sharded_single.safetensors  the same state dict in one file (save_file), to compare tensor by tensor.

Run from the repository root: python3 tools/make_safetensors_fixtures.py  (needs torch, safetensors, transformers).
"""
import os
import shutil

import torch
from safetensors.torch import save_file
from transformers import Qwen3Config, Qwen3ForCausalLM

OUT = os.path.join("tests", "data", "model", "safetensors")

# name, dtype, shape
SPECS = [
    ("t_f32_2d", torch.float32, (3, 5)),
    ("t_bf16_1d", torch.bfloat16, (7,)),
    ("t_f16_3d", torch.float16, (2, 3, 4)),
    ("t_f32_scalar", torch.float32, ()),
    ("t_bf16_empty", torch.bfloat16, (4, 0)),
    ("t_f16_4d", torch.float16, (1, 2, 1, 3)),
    ("t_f32_1d", torch.float32, (9,)),
]


def value_tensor(k, dtype, shape):
    n = 1
    for d in shape:
        n *= d
    i = torch.arange(n, dtype=torch.float64)
    v = ((i % 13) - 6) * 0.25 + k
    return v.to(dtype).reshape(shape)


def main():
    os.makedirs(OUT, exist_ok=True)
    tensors = {name: value_tensor(k, dt, shape) for k, (name, dt, shape) in enumerate(SPECS)}
    save_file(tensors, os.path.join(OUT, "mixed.safetensors"), metadata={"format": "pt", "writer": "python"})

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False)
    model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    shard_dir = os.path.join(OUT, "sharded")
    shutil.rmtree(shard_dir, ignore_errors=True)
    model.save_pretrained(shard_dir, max_shard_size="12KB", safe_serialization=True)
    for extra in ("config.json", "generation_config.json"):
        p = os.path.join(shard_dir, extra)
        if os.path.exists(p):
            os.remove(p)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.path.join(OUT, "sharded_single.safetensors"), metadata={"format": "pt"})
    print("wrote", sorted(os.listdir(OUT)), sorted(os.listdir(shard_dir)))


if __name__ == "__main__":
    main()
