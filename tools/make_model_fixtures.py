#!/usr/bin/env python3
"""make_model_fixtures.py: builds the tiny random HF models and reference outputs the model parity tests use.

Offline tool, run by hand (torch 2.x, transformers 4.52.4, safetensors); the tests never run Python. It writes one
folder per model under tests/data/model/hf/ (default), each holding what HF save_pretrained writes (config.json,
generation_config.json, model.safetensors or a sharded model.safetensors.index.json + shards) and ref.kwfx, the
reference outputs computed by HF transformers on CPU.

Models (tiny, random, cut-down vocab of 512 so each folder stays a few hundred KB):
  qwen2_gqa2    Qwen2ForCausalLM, q/k/v bias, 4 q heads / 2 kv heads, tied embeddings, fp32,
                EOS chosen so that greedy generation stops early (tests the EOS path)
  qwen3_gqa3    Qwen3ForCausalLM, q/k norm, head_dim 24 != hidden/heads, 6 q heads / 2 kv heads, tied, fp32
  llama_gqa4    LlamaForCausalLM, llama3 rope scaling, untied lm_head, attention and mlp biases,
                4 q heads / 1 kv head, fp32, saved sharded (model.safetensors.index.json)
  qwen3_bf16    Qwen3ForCausalLM with bf16 weights (torch_dtype bfloat16), 4 q heads / 1 kv head
  gemma3_swa    Gemma3ForCausalLM, hidden 80, 5 layers with sliding_window_pattern 3 (sliding, sliding, global, sliding, sliding),
                window 8 < the 32-token prompt, rope_local_base_freq 100 vs rope_theta 10000 with linear scaling 2 on
                the global layers, query_pre_attn_scalar 24 != head_dim 16, final_logit_softcapping 3, tied, fp32
  gemma3_bias   Gemma3ForCausalLM, attention_bias, untied lm_head, 4 q heads / 1 kv head of 32, pattern 2, window 5,
                query_pre_attn_scalar left at its default 256, no softcap, fp32
  gemma3_bf16   Gemma3ForCausalLM with bf16 weights, hidden 72 (sqrt(72) is not a bf16 value, so the embedding scale's
                rounding shows), pattern 2, window 6, tied
HF initialises norm weights to 1 and biases to 0, which would hide a missing norm weight or bias: every norm weight is
redrawn uniform in [0.5, 1.5] (Gemma3, whose norms scale by 1 + w: uniform in [-0.5, 0.5]) and every bias normal with
std 0.1.

Gemma3 specifics. The K/V arrays come from a prefill into a DynamicCache (every position of every layer; the default
HybridCache keeps only the last `sliding_window` rows of a sliding layer), after checking that its logits equal the
default forward's. The generation runs with HF's default HybridCache, and its step logits are checked against one
uncached forward over prompt + generated tokens (the sliding-window mask applied to the whole sequence), so the
reference does not depend on the cache HF happened to use. The embedding is scaled in the embedding's dtype (HF:
embed * embed_scale.to(weight.dtype)); for gemma3_bf16 the "f32act." reference keeps exactly that (the scale rounded
to bf16, the scaled embedding rounded to bf16) and computes everything after it in fp32, which is what kvwire does
with bf16 weights.

ref.kwfx layout (all little-endian):
  header  : char magic[4] = "KWFX"; u32 version = 1; u32 n_arrays; u32 reserved = 0
  n_arrays times:
          u32 name_len; char name[name_len] (ASCII, no NUL); u32 dtype (0 = f32, 3 = i32, as enum kw_dtype);
          u32 ndim (1..4); i64 shape[ndim] (outermost first); data: product(shape) * 4 bytes, row-major
Arrays (P prompt tokens, V vocab, G generated tokens, Hkv kv heads, D head_dim, l = layer index):
  meta          i32 (4)          P, max_new_tokens, 1 if generation stopped at an EOS else 0, 1 if bf16 compute
  prompt_ids    i32 (P)
  logits        f32 (P, V)       logits of every prompt position (one forward over the whole prompt)
  k.<l>, v.<l>  f32 (Hkv, P, D)  the DynamicCache after that forward; K is post-RoPE (and post-k_norm for Qwen3)
  gen_ids       i32 (G)          model.generate(do_sample=False): the new tokens only, the EOS included if hit
  gen_logits    f32 (G, V)       the logits each generation step took its argmax over (output_scores)
For qwen3_bf16 the arrays above come from HF computing in bf16 (its real behaviour, bf16 values widened to f32), and
the same set prefixed "f32act." comes from the same bf16 weights upcast to fp32 (model.float()), which is what
kvwire computes on the CPU (fp32 activations from bf16 weights).

Usage: python3 tools/make_model_fixtures.py [--out tests/data/model/hf] [--only gemma3_swa,gemma3_bf16]
(The Gemma3 fixtures were made with transformers 4.52.4 and torch 2.15 on CPU: --only gemma3_swa,gemma3_bias,gemma3_bf16.)
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
from transformers import (DynamicCache, Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig, LlamaConfig,
                          LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from kw_fixtures import randomize_norms_and_biases, write_kwfx  # tools/kw_fixtures.py

VOCAB = 512
PROMPT_LEN = 32
MAX_NEW = 32


def is_gemma(model):
    return isinstance(model, Gemma3ForCausalLM)


def reference(model, prompt, prefix=""):
    """Logits, KV cache and greedy generation of model on prompt, as (name, array) pairs."""
    ids = torch.tensor([prompt], dtype=torch.long)
    out = []
    with torch.no_grad():
        res = model(ids, use_cache=True)
        if is_gemma(model):
            # the whole cache (every row of the sliding layers too), from a DynamicCache prefill that must give the
            # same logits as the default one
            dyn = model(ids, use_cache=True, past_key_values=DynamicCache())
            assert torch.equal(dyn.logits, res.logits), "DynamicCache prefill differs from the default one"
            res = dyn
        out.append((prefix + "logits", res.logits[0].float().numpy()))
        cache = res.past_key_values
        for l in range(model.config.num_hidden_layers):
            out.append((prefix + f"k.{l}", cache.key_cache[l][0].float().numpy()))
            out.append((prefix + f"v.{l}", cache.value_cache[l][0].float().numpy()))
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=MAX_NEW,
                             min_new_tokens=0, output_scores=True, return_dict_in_generate=True)
    new = gen.sequences[0, len(prompt):].numpy().astype(np.int32)
    scores = torch.stack([s[0] for s in gen.scores]).float().numpy()
    if is_gemma(model):
        # the cached generation against one uncached forward over the whole sequence
        with torch.no_grad():
            full = model(gen.sequences, use_cache=False).logits[0, len(prompt) - 1:-1].float().numpy()
        d = np.abs(full - scores).max() / np.abs(full).max()
        tol = 1e-5 if next(model.parameters()).dtype == torch.float32 else 0.05
        assert d < tol, f"HybridCache generation differs from the uncached forward by {d}"
        print(f"  {prefix or 'main'}: cached generation vs uncached forward, relative {d:.2e}")
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    stopped = int(len(new) > 0 and int(new[-1]) in eos)
    out.append((prefix + "gen_ids", new))
    out.append((prefix + "gen_logits", scores))
    return out, new, stopped


def margins(scores):
    """Smallest top-1 minus top-2 gap over the steps, relative to the largest |logit|."""
    worst = np.inf
    for row in scores:
        top = np.sort(row)[-2:]
        worst = min(worst, (top[1] - top[0]) / np.abs(row).max())
    return worst


def randomize_gemma_norms(model, seed):
    """Gemma3 norms scale by 1 + w: w uniform in [-0.5, 0.5] (HF initialises them to 1, i.e. a scale of 2)."""
    g = torch.Generator().manual_seed(seed + 2000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) - 0.5)


def f32act_gemma(f32, bf16_model):
    """The fp32 model that computes what kvwire does with bf16 weights: HF's bf16 embedding (scale rounded to bf16,
    scaled embedding rounded to bf16), everything after it in fp32."""
    emb = f32.model.embed_tokens
    emb.embed_scale.copy_(bf16_model.model.embed_tokens.embed_scale.float())
    emb.register_forward_hook(lambda mod, inp, out: out.to(torch.bfloat16).float())


ONLY = None  # --only: the model names to (re)build, None = all


def build(name, cfg_cls, model_cls, cfg_kwargs, seed, out_dir, dtype=torch.float32, eos_mode="never", shard=None):
    if ONLY is not None and name not in ONLY:
        return
    torch.manual_seed(seed)
    cfg = cfg_cls(**cfg_kwargs)
    model = model_cls(cfg).eval()
    randomize_norms_and_biases(model, seed)
    if model_cls is Gemma3ForCausalLM:
        randomize_gemma_norms(model, seed)
    if dtype != torch.float32:
        model = model.to(dtype)
    g = torch.Generator().manual_seed(seed + 7)
    prompt = torch.randint(0, VOCAB, (PROMPT_LEN,), generator=g).tolist()

    # A first greedy run without EOS tells which ids it produces, to pick an EOS that stops it (or never does).
    model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=0, do_sample=False)
    with torch.no_grad():
        trial = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, PROMPT_LEN, dtype=torch.long),
                               do_sample=False, max_new_tokens=MAX_NEW)[0, PROMPT_LEN:].tolist()
    if eos_mode == "stop":
        # the first id that appears first at step >= 12: generation stops there
        eos = next(t for i, t in enumerate(trial) if i >= 12 and t not in trial[:i])
        eos_list = [eos, VOCAB - 1 if eos != VOCAB - 1 else VOCAB - 2]
    else:
        eos_list = [t for t in range(VOCAB - 1, 0, -1) if t not in trial][:2]
    model.generation_config = GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=eos_list,
                                               pad_token_id=eos_list[-1], do_sample=False)
    model.config.eos_token_id = eos_list[0]

    arrays, new, stopped = reference(model, prompt)
    meta = [PROMPT_LEN, MAX_NEW, stopped, int(dtype == torch.bfloat16)]
    arrays = [("meta", np.array(meta, dtype=np.int32)), ("prompt_ids", np.array(prompt, dtype=np.int32))] + arrays
    gen_scores = dict(arrays)["gen_logits"]
    print(f"{name}: generated {len(new)} tokens (stopped at EOS: {stopped}), eos {eos_list}, "
          f"min relative top-2 margin {margins(gen_scores):.3e}")
    if dtype == torch.bfloat16:
        f32 = model_cls(cfg).eval()
        f32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        f32.generation_config = model.generation_config
        if model_cls is Gemma3ForCausalLM:
            f32act_gemma(f32, model)
        extra, new32, _ = reference(f32, prompt, prefix="f32act.")
        arrays += extra
        d = dict(arrays)
        for key in ["logits"] + [f"k.{l}" for l in range(cfg.num_hidden_layers)]:
            a, b = d[key], d["f32act." + key]
            print(f"  bf16 compute vs fp32 compute, {key}: max abs diff {np.abs(a - b).max():.3e}, "
                  f"relative to max |ref| {np.abs(a - b).max() / np.abs(b).max():.3e}")
        print(f"  fp32-compute greedy: {new32.tolist()}\n  bf16-compute greedy: {new.tolist()}")
        print(f"  fp32-compute min relative top-2 margin {margins(d['f32act.gen_logits']):.3e}")

    path = os.path.join(out_dir, name)
    shutil.rmtree(path, ignore_errors=True)
    if shard:
        model.save_pretrained(path, safe_serialization=True, max_shard_size=shard)
    else:
        model.save_pretrained(path, safe_serialization=True)
    write_kwfx(os.path.join(path, "ref.kwfx"), arrays)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "model", "hf"))
    ap.add_argument("--only", help="comma-separated model names to rebuild (default: all)")
    args = ap.parse_args()
    global ONLY
    ONLY = set(args.only.split(",")) if args.only else None
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)
    common = dict(vocab_size=VOCAB, hidden_size=64, max_position_embeddings=256, initializer_range=0.2,
                  bos_token_id=1, eos_token_id=2, use_cache=True)
    build("qwen2_gqa2", Qwen2Config, Qwen2ForCausalLM,
          dict(common, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False),
          seed=11, out_dir=args.out, eos_mode="stop")
    build("qwen3_gqa3", Qwen3Config, Qwen3ForCausalLM,
          dict(common, intermediate_size=128, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
               head_dim=24, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
               attention_bias=False),
          seed=12, out_dir=args.out)
    build("llama_gqa4", LlamaConfig, LlamaForCausalLM,
          dict(common, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
               rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
               rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=32)),
          seed=13, out_dir=args.out, shard="150KB")
    build("qwen3_bf16", Qwen3Config, Qwen3ForCausalLM,
          # a smaller init keeps HF's bf16 rounding error D small enough that HF's greedy margins exceed the
          # derived bound (2 D) for most steps, so the bf16 greedy comparison in the test covers many steps
          dict(common, initializer_range=0.05, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=1, head_dim=32, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
               attention_bias=False, torch_dtype="bfloat16"),
          seed=14, out_dir=args.out, dtype=torch.bfloat16)
    gemma = dict(common, pad_token_id=0, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
                 attn_logit_softcapping=None)
    build("gemma3_swa", Gemma3TextConfig, Gemma3ForCausalLM,
          dict(gemma, hidden_size=80, intermediate_size=128, num_hidden_layers=5, num_attention_heads=4,
               num_key_value_heads=2,
               head_dim=16, query_pre_attn_scalar=24, sliding_window=8, sliding_window_pattern=3,
               rope_theta=10000.0, rope_local_base_freq=100.0, rope_scaling=dict(rope_type="linear", factor=2.0),
               final_logit_softcapping=3.0, tie_word_embeddings=True, attention_bias=False),
          seed=15, out_dir=args.out)
    build("gemma3_bias", Gemma3TextConfig, Gemma3ForCausalLM,
          dict(gemma, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
               head_dim=32, sliding_window=5, sliding_window_pattern=2, rope_theta=10000.0,
               rope_local_base_freq=10000.0, final_logit_softcapping=None, tie_word_embeddings=False,
               attention_bias=True),
          seed=16, out_dir=args.out, eos_mode="stop")
    build("gemma3_bf16", Gemma3TextConfig, Gemma3ForCausalLM,
          # the smaller init of qwen3_bf16, for the same reason
          dict(gemma, hidden_size=72, initializer_range=0.05, intermediate_size=128, num_hidden_layers=4,
               num_attention_heads=4,
               num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=6,
               sliding_window_pattern=2, rope_theta=1000000.0, rope_local_base_freq=10000.0,
               final_logit_softcapping=None, tie_word_embeddings=True, attention_bias=False,
               torch_dtype="bfloat16"),
          # seed 39: HF bf16's top-2 margin exceeds the test's derived bound (2 * (2 D + 1e-4)) on all 32 steps, so
          # the bf16 greedy comparison covers every token (most seeds of this tiny random model give 0-9 steps)
          seed=39, out_dir=args.out, dtype=torch.bfloat16)


if __name__ == "__main__":
    main()
