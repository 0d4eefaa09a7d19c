#!/usr/bin/env python3
"""check_genmodel_hf.py: checks that folders written by `kvwire gen-model` are real HF checkpoints.

For each model folder given:
  1. transformers loads it (AutoConfig, GenerationConfig, AutoModelForCausalLM) with no missing, unexpected or
     mismatched weights, and the loaded config has the expected class, shapes, biases, rope scaling and eos ids;
  2. every tensor transformers holds equals the bytes in model.safetensors (lm_head == embed_tokens when tied);
  3. an independent numpy re-implementation of the generator formula (see model/kw_genmodel.h) reproduces every
     tensor bit for bit from the seed, which is how we know the weights depend on nothing but (seed, name, index);
  4. a forward pass gives finite logits that are not all ties; the tokenizer (if copied) loads with AutoTokenizer.
It is a one-off developer check (CI never runs Python): run it after changing the generator, e.g.

  build/tools/kvwire gen-model --arch qwen3 --preset tiny --seed 1 --tokenizer models/tokenizers/qwen3 --out /tmp/q3
  python3 tools/check_genmodel_hf.py --seed 1 /tmp/q3
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

M64 = (1 << 64) - 1
SAMPLE_ABOVE = 1 << 22  # tensors with more elements are checked on a sample (real-shape presets)
GAMMA = np.uint64(0x9E3779B97F4A7C15)


def mix(z):
    """splitmix64 finaliser on numpy uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def key_of(seed, name):
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    s = mix(np.array([(seed + 0x9E3779B97F4A7C15) & M64], dtype=np.uint64))[0]
    return mix(np.array([h], dtype=np.uint64) ^ s)[0]


def expected_f32(seed, name, kind, n, index=None):
    """The generator's value of elements index (default: all n) of the named tensor, as float32."""
    key = key_of(seed, name)
    i = np.arange(n, dtype=np.uint64) if index is None else index.astype(np.uint64)
    total = np.zeros(i.shape[0], dtype=np.int64)
    with np.errstate(over="ignore"):
        for d in range(3):
            r = mix(key + (np.uint64(3) * i + np.uint64(d + 1)) * GAMMA)
            for s in range(4):
                total += ((r >> np.uint64(16 * s)) & np.uint64(0xFFFF)).astype(np.int64)
    total -= 393210
    if kind == 2:  # Gemma3 norms (scaled by 1 + w): zero-centred
        return total.astype(np.float32) * np.float32(2.0**-20)
    if kind == 1:
        return (total + (1 << 20)).astype(np.float32) * np.float32(2.0**-20)
    return total.astype(np.float32) * np.float32(2.0**-22)


def value_kind(name, arch):
    """The generator's formula for a tensor: 0 matrix, 1 norm (1 + noise), 2 Gemma3 norm (noise)."""
    norm = name.endswith("layernorm.weight") or name.endswith("_norm.weight") or name == "model.norm.weight"
    return (2 if arch == "gemma3_text" else 1) if norm else 0


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def check(folder, seed):
    cfg_json = json.load(open(os.path.join(folder, "config.json")))
    config = AutoConfig.from_pretrained(folder)
    gen = GenerationConfig.from_pretrained(folder)
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, torch_dtype=torch.float32, output_loading_info=True, attn_implementation="eager")
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(k):
            fail(f"{folder}: {k} = {info[k]}")
    if type(model).__name__ != cfg_json["architectures"][0]:
        fail(f"{folder}: loaded {type(model).__name__}")
    arch = config.model_type
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attn = model.model.layers[0].self_attn
    if attn.q_proj.weight.shape != (config.num_attention_heads * head_dim, config.hidden_size):
        fail(f"{folder}: q_proj shape {tuple(attn.q_proj.weight.shape)}")
    if (attn.q_proj.bias is not None) != (arch == "qwen2" or bool(getattr(config, "attention_bias", False))):
        fail(f"{folder}: q_proj bias presence")
    if (arch in ("qwen3", "gemma3_text")) != hasattr(attn, "q_norm"):
        fail(f"{folder}: q_norm presence")
    if arch == "gemma3_text":
        kinds = [bool((i + 1) % config.sliding_window_pattern) for i in range(config.num_hidden_layers)]
        if kinds != [layer.is_sliding for layer in model.model.layers]:
            fail(f"{folder}: sliding layers {[layer.is_sliding for layer in model.model.layers]}")
        if cfg_json.get("layer_types") != ["sliding_attention" if k else "full_attention" for k in kinds]:
            fail(f"{folder}: layer_types {cfg_json.get('layer_types')} disagree with the pattern")
        if attn.scaling != config.query_pre_attn_scalar ** -0.5:
            fail(f"{folder}: attention scaling {attn.scaling}")
    if arch == "llama" and (config.rope_scaling or {}).get("rope_type") != "llama3":
        fail(f"{folder}: llama rope_scaling {config.rope_scaling}")
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    print(f"  {arch}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, heads "
          f"{config.num_attention_heads}/{config.num_key_value_heads} x {head_dim}, vocab {config.vocab_size}, "
          f"tied {config.tie_word_embeddings}, eos {eos}")

    # 2 and 3: every tensor against the file and against the independent formula.
    state = model.state_dict()
    dtype_name = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}
    with safe_open(os.path.join(folder, "model.safetensors"), framework="pt") as f:
        if f.metadata().get("format") != "pt":
            fail(f"{folder}: metadata {f.metadata()}")
        names = list(f.keys())
        for name in names:
            t = f.get_tensor(name)
            if name not in state:
                fail(f"{folder}: {name} is not a model parameter")
            if not torch.equal(state[name], t.float()):
                fail(f"{folder}: {name} differs between transformers and the file")
            flat = t.reshape(-1)
            index = None
            if flat.numel() > SAMPLE_ABOVE:  # big tensors: the first 64K elements and a strided sample
                index = np.unique(np.concatenate([np.arange(65536), np.arange(0, flat.numel(), 997),
                                                  [flat.numel() - 1]]))
                flat = flat[torch.from_numpy(index)]
            want = torch.from_numpy(expected_f32(seed, name, value_kind(name, arch), flat.numel(), index))
            want = want.to(t.dtype)  # round to nearest even, as kw_half.h does
            bits = torch.int16 if t.dtype != torch.float32 else torch.int32
            if not torch.equal(want.view(bits), flat.contiguous().view(bits)):
                fail(f"{folder}: {name} ({dtype_name[t.dtype]}) is not the seed-{seed} formula")
        if config.tie_word_embeddings:
            if "lm_head.weight" in names or not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
                fail(f"{folder}: tied embeddings")
        elif "lm_head.weight" not in names:
            fail(f"{folder}: untied model without lm_head.weight")
    print(f"  {len(names)} tensors match transformers and the seed formula bit for bit "
          f"(tensors over {SAMPLE_ABOVE} elements on a sample)")

    # 4: a forward pass.
    ids = torch.tensor([[min(5, config.vocab_size - 1), 17 % config.vocab_size, 3 % config.vocab_size]])
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    if not torch.isfinite(logits).all():
        fail(f"{folder}: non-finite logits")
    top = logits.max()
    ties = int((logits == top).sum())
    if ties != 1 or logits.std() == 0:
        fail(f"{folder}: {ties} tied maxima")
    print(f"  forward ok: logits std {logits.std():.4f}, argmax {int(logits.argmax())}")
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        tok = AutoTokenizer.from_pretrained(folder)
        print(f"  tokenizer ok: {type(tok).__name__}, {len(tok)} tokens")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, required=True, help="the --seed the folders were generated with")
    ap.add_argument("folders", nargs="+")
    args = ap.parse_args()
    for folder in args.folders:
        print(folder)
        check(folder, args.seed)
    print("OK")


if __name__ == "__main__":
    main()
