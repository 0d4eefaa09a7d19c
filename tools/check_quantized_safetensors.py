#!/usr/bin/env python3
"""check_quantized_safetensors.py: reads a safetensors file written by `kvwire quantize --out X.safetensors` with the
`safetensors` package alone (no kvwire code), dequantizes every quantized matrix from the layout docs/FORMAT.md
documents ("Appendix: quantized safetensors checkpoints"), and compares the values bit for bit with kvwire's own dequantization of the
GGUF file the same scheme writes.

kvwire's dequantization is taken from kvwire itself: the GGUF output is converted back to an F32 GGUF
(`kvwire quantize --model X.gguf --type f32`, which dequantizes every tensor with model/kw_dequant.c), read here with a
small GGUF reader, renamed to HF names and (Llama) its q/k rows put back in HF order.

A one-off developer check (CI never runs Python; pip install safetensors numpy), e.g.

  build/tools/kvwire gen-model --arch qwen3 --hidden 256 --head-dim 64 --intermediate 352 --out /tmp/src
  python3 tools/check_quantized_safetensors.py --kvwire build/tools/kvwire --model /tmp/src --work /tmp/qchk

(A gen-model Llama has llama3 RoPE scaling, which kvwire's GGUF writer refuses: set "rope_scaling" to null in its
config.json first.)
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
from safetensors import safe_open

LAYOUTS = {  # layout -> (code bits, group, has minimum)
    "int8/g32": (8, 32, False),
    "uint4/g32/min": (4, 32, True),
    "int8/g16": (8, 16, False),
}


def dequantize(f, name, layout):
    bits, group, has_min = LAYOUTS[layout]
    codes = f.get_tensor(name)
    if bits == 4:  # value 2j in the low nibble of byte j, 2j + 1 in the high nibble
        assert codes.dtype == np.uint8
        q = np.empty((codes.shape[0], codes.shape[1] * 2), dtype=np.float32)
        q[:, 0::2] = codes & 0x0F
        q[:, 1::2] = codes >> 4
    else:
        assert codes.dtype == np.int8
        q = codes.astype(np.float32)
    scale = np.repeat(f.get_tensor(name + "_scale").astype(np.float32), group, axis=1)
    assert scale.shape == q.shape, (name, scale.shape, q.shape)
    v = q * scale  # one f32 rounding, as ggml
    if has_min:
        v = v - np.repeat(f.get_tensor(name + "_min").astype(np.float32), group, axis=1)
    return v


def read_gguf_f32(path):
    """The F32 tensors of a GGUF v3 file, as {name: array in ggml order reversed (rows, cols)}."""
    data = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return vals[0] if len(vals) == 1 else vals

    def string():
        nonlocal pos
        n = take("Q")
        s = data[pos:pos + n].decode()
        pos += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("I"), take("Q")
            return [value(et) for _ in range(n)]
        return take(scalar[t])

    assert data[:4] == b"GGUF" and take("4sI")[1] == 3
    n_tensors, n_kv = take("Q"), take("Q")
    kv = {}
    for _ in range(n_kv):
        k = string()
        kv[k] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        nd = take("I")
        ne = [take("Q") for _ in range(nd)]
        typ, off = take("I"), take("Q")
        infos.append((name, ne, typ, off))
    align = kv.get("general.alignment", 32)
    base = (pos + align - 1) // align * align
    out = {}
    for name, ne, typ, off in infos:
        assert typ == 0, f"{name}: type {typ}, expected F32"
        count = int(np.prod(ne))
        out[name] = np.frombuffer(data, dtype="<f4", count=count, offset=base + off).reshape(list(reversed(ne)))
    return out, kv


HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf)
    assert m and m.group(2) in HF_TO_GGUF, hf
    return f"blk.{m.group(1)}.{HF_TO_GGUF[m.group(2)]}.weight"


def hf_rows(x, heads):
    """llama.cpp's converter stores row 2j + i of each head at HF row i * hd/2 + j: undo it."""
    hd = x.shape[0] // heads
    y = np.empty_like(x)
    for h in range(heads):
        for r in range(hd):
            y[h * hd + (r % 2) * (hd // 2) + r // 2] = x[h * hd + r]
    return y


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvwire", required=True)
    ap.add_argument("--model", required=True, help="an HF folder")
    ap.add_argument("--work", required=True, help="a scratch folder")
    ap.add_argument("--types", default="q8_0,q4_k,q4_k_m")
    args = ap.parse_args()
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    arch = cfg["model_type"]
    failures = 0
    for typ in args.types.split(","):
        work = os.path.join(args.work, typ)
        os.makedirs(work, exist_ok=True)
        gguf, deq, st = (os.path.join(work, n) for n in ("q.gguf", "deq.gguf", "model.safetensors"))
        for model, out, t in ((args.model, gguf, typ), (args.model, st, typ), (gguf, deq, "f32")):
            subprocess.run([args.kvwire, "quantize", "--model", model, "--out", out, "--type", t], check=True,
                           stderr=subprocess.DEVNULL)
        ref, _ = read_gguf_f32(deq)
        n = 0
        with safe_open(st, framework="np") as f:
            meta = f.metadata()
            assert meta["quantization"] == "kvwire-v1", meta.get("quantization")
            for key, layout in sorted(meta.items()):
                if not key.startswith("quantization.") or key == "quantization.scheme":
                    continue
                name = key[len("quantization."):]
                got = dequantize(f, name, layout)
                want = ref[gguf_name(name)]
                if arch == "llama" and (".q_proj." in name or ".k_proj." in name):
                    heads = cfg["num_attention_heads"] if ".q_proj." in name else cfg["num_key_value_heads"]
                    want = hf_rows(want, heads)
                same = got.shape == want.shape and np.array_equal(got.view(np.uint32), want.view(np.uint32))
                if not same:
                    failures += 1
                    print(f"  {typ} {name} ({layout}): DIFFERS from kvwire's GGUF dequantization")
                n += 1
        print(f"{typ}: {n} quantized matrices compared bit for bit with kvwire's dequantization of {gguf}")
    print("OK" if failures == 0 else f"{failures} FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
