#!/usr/bin/env python3
"""check_gen_fuser.py: proves that torch and the C2C reference read what `kvwire gen-fuser` writes, and that the C
reader agrees with torch on every tensor.

For a tiny Qwen3 receiver / Qwen2 sharer pair (made with `kvwire gen-model`), a Qwen3 / Llama pair, and the real
Qwen3-0.6B / Qwen2.5-0.5B dimensions (configs from tests/data/model/configs; hidden 1024, checked on a few projectors
to bound the time), in bf16 and f32:
  1. `kvwire gen-fuser` writes the folder (projector_<i>.pt by the C zip+pickle writer);
  2. torch.load(..., weights_only=True) reads every projector_<i>.pt (torch's restricted unpickler);
  3. the reference builds C2CProjector from projector_<i>.json with its own load_projector and loads the state_dict
     with strict=True (every key and shape must match), then runs one forward pass;
  4. projector_config.json equals the reference's last_aligned_sources mapping, and the gates have the printed kinds;
  5. `kvwire convert-fuser` (the C reader -> safetensors) gives, for every tensor, exactly the bf16 bytes of
     torch.load's tensor cast to bf16.
Needs the C2C reference checkout (--c2c; not part of this repository) and a built kvwire (--kvwire).

    python3 tools/check_gen_fuser.py --kvwire build/tools/kvwire --c2c /path/to/C2C
"""
import argparse
import ast
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def reference_function(path, name):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    ns = {}
    exec("from typing import Dict, List, Any", ns)
    exec(compile(ast.Module(body=fn, type_ignores=[]), path, "exec"), ns)
    return ns[name]


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout


def check_folder(args, load_projector, last_aligned, recv, shar, out, extra, max_projectors=None):
    printed = run([args.kvwire, "gen-fuser", "--receiver", recv, "--sharer", shar, "--out", out] + extra)
    kinds = dict(re.findall(r" (\d+):(open|closed|k-only|v-only)", printed))
    rcfg = json.load(open(os.path.join(recv, "config.json")))
    scfg = json.load(open(os.path.join(shar, "config.json")))
    T, S = rcfg["num_hidden_layers"], scfg["num_hidden_layers"]
    final = os.path.join(out, "final")
    mapping = json.load(open(os.path.join(final, "projector_config.json")))
    want = {str(t): [[s[0], t]] for t, s in last_aligned(T, S, 1).items()}
    assert mapping == {"0": {"1": want}}, (mapping, want)

    conv = out + "_st"
    run([args.kvwire, "convert-fuser", "--in", out, "--out", conv])
    n = T if max_projectors is None else min(T, max_projectors)
    for i in range(n):
        sd = torch.load(os.path.join(final, f"projector_{i}.pt"), weights_only=True)
        proj = load_projector(os.path.join(final, f"projector_{i}.json"))
        proj.load_state_dict(sd, strict=True)  # every key present, no extra key, every shape right
        proj.eval()
        k = kinds[str(i)]
        assert (float(sd["key_gate_logit"]) > 0) == (k in ("open", "k-only")), (i, k)
        assert (float(sd["value_gate_logit"]) > 0) == (k in ("open", "v-only")), (i, k)
        with torch.no_grad():
            p = proj.to(torch.bfloat16)
            hs, ds, ht, dt = p.source_num_heads, p.source_dim, p.target_num_heads, p.target_dim
            src = (torch.randn(1, hs, 3, ds, dtype=torch.bfloat16), torch.randn(1, hs, 3, ds, dtype=torch.bfloat16))
            tgt = (torch.randn(1, ht, 3, dt, dtype=torch.bfloat16), torch.randn(1, ht, 3, dt, dtype=torch.bfloat16))
            ok, ov = p(src, tgt)
            assert ok.shape == tgt[0].shape and torch.isfinite(ok.float()).all() and torch.isfinite(ov.float()).all()
            if k == "closed":
                assert torch.equal(ok, tgt[0]) and torch.equal(ov, tgt[1])
        c = load_file(os.path.join(conv, "final", f"projector_{i}.safetensors"))
        assert set(c) == set(sd) - {"gate_temperature"}, set(sd) ^ set(c)
        for name, t in c.items():
            ref = sd[name].to(torch.bfloat16)
            assert t.dtype == torch.bfloat16 and t.shape == ref.shape, name
            assert torch.equal(t.view(torch.int16), ref.view(torch.int16)), f"{out} projector {i} {name}"
    print(f"ok: {out}: {T} projectors, {n} checked, gates {''.join(v[0] for v in kinds.values())}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kvwire", required=True)
    ap.add_argument("--c2c", required=True, help="checkout of github.com/thu-nics/C2C")
    ap.add_argument("--skip-real", action="store_true", help="skip the real-dimension (about 1 GB) fuser")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.c2c))
    from rosetta.model.projector import load_projector  # reference code, from its checkout
    last_aligned = reference_function(os.path.join(args.c2c, "rosetta", "train", "model_utils.py"),
                                      "last_aligned_sources")
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for name, arch, layers in (("recv", "qwen3", 4), ("qwen2", "qwen2", 3), ("llama", "llama", 6)):
            models[name] = os.path.join(tmp, name)
            run([args.kvwire, "gen-model", "--arch", arch, "--out", models[name], "--layers", str(layers),
                 "--vocab", "1000", "--seed", "5"])
        check_folder(args, load_projector, last_aligned, models["recv"], models["qwen2"], os.path.join(tmp, "a"),
                     ["--seed", "7", "--hidden", "32", "--intermediate", "24"])
        check_folder(args, load_projector, last_aligned, models["recv"], models["qwen2"], os.path.join(tmp, "b"),
                     ["--seed", "8", "--hidden", "48", "--intermediate", "40", "--dtype", "f32", "--num-layers", "4",
                      "--closed-layers", "0", "--v-only-layers", "2"])
        check_folder(args, load_projector, last_aligned, models["recv"], models["llama"], os.path.join(tmp, "c"),
                     ["--seed", "9", "--hidden", "32", "--intermediate", "24", "--k-only-layers", "1,3"])
        cfg = json.load(open(os.path.join(tmp, "c", "config.json")))
        assert cfg["model"]["is_do_alignment"] is True and cfg["model"]["alignment_strategy"] == "longest"
        if not args.skip_real:
            configs = os.path.join(ROOT, "tests", "data", "model", "configs")
            check_folder(args, load_projector, last_aligned, os.path.join(configs, "qwen3-0.6b"),
                         os.path.join(configs, "qwen2.5-0.5b-instruct"), os.path.join(tmp, "real"),
                         ["--seed", "1"], max_projectors=3)
    print("all checks passed (torch", torch.__version__ + ")")


if __name__ == "__main__":
    main()
