#!/usr/bin/env python3
"""make_fuser_fixtures.py: a tiny fuser folder written by the C2C reference code itself, for tests/c2c.

Builds three C2CProjectors with the reference's create_projector (the call SFT_train.py makes), saves each with
torch.save(proj.state_dict()) and the reference's save_projector, builds the layer mapping with the reference's
last_aligned_sources and RosettaModel.set_projector_config / save_projector_config, and writes a recipe config.json
in the layout of recipe/train_recipe/C2C_0.6+0.5.json. Result (the released layout):
  tests/data/c2c/fuser_ref/config.json
  tests/data/c2c/fuser_ref/final/{projector_config.json, projector_{0,1,2}.json, projector_{0,1,2}.pt}
  tests/data/c2c/fuser_ref/manifest.json   what the C loader must find (dims, mapping, bf16 gate values, and the
                                           name, shape and CRC-32 of every tensor after conversion to bf16)
Projectors 0 and 1 are bf16; projector 2 is float32 (the loader converts it). Gates: projector 0 both open,
projector 1 both closed (0.0 exactly and negative), projector 2 key only.

The reference code is NOT part of this repository: pass its checkout with --c2c. The committed folder was written
with torch 2.6.0 (the reference's pinned version; its archives differ from newer torch: no .format_version or
.storage_alignment records, storages in lexicographic key order), e.g. with a torch 2.6 installed under DIR:

    PYTHONPATH=DIR python3 tools/make_fuser_fixtures.py --c2c /path/to/C2C [--out tests/data/c2c/fuser_ref]
"""
import argparse
import ast
import json
import os
import shutil
import sys
import types
import zlib

import torch

RECEIVER_LAYERS, SHARER_LAYERS = 3, 2
DIMS = dict(source_dim=4, target_dim=8, source_num_heads=2, target_num_heads=2)
PARAMS = dict(hidden_dim=16, intermediate_dim=12, num_layers=3, dropout=0.1, initial_temperature=1.0,
              final_temperature=0.001, anneal_steps=1929)
GATES = [(0.5, 1.25), (0.0, -0.5), (0.25, 0.0)]


def reference_function(path, name):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    if not fn:
        sys.exit(f"{path}: {name} not found")
    ns = {}
    exec("from typing import Dict, List, Any", ns)
    exec(compile(ast.Module(body=fn, type_ignores=[]), path, "exec"), ns)
    return ns[name]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--c2c", required=True, help="checkout of github.com/thu-nics/C2C")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "c2c", "fuser_ref"))
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.c2c))
    from rosetta.model.projector import create_projector, save_projector  # reference code, from its checkout
    from rosetta.model.wrapper import RosettaModel
    last_aligned_sources = reference_function(os.path.join(args.c2c, "rosetta", "train", "model_utils.py"),
                                              "last_aligned_sources")

    shutil.rmtree(args.out, ignore_errors=True)
    final = os.path.join(args.out, "final")
    os.makedirs(final)
    recipe = {
        "model": {
            "base_model": "kvwire/tiny-qwen3-receiver", "teacher_model": "kvwire/tiny-qwen2-sharer",
            "is_do_alignment": False, "alignment_strategy": "first",
            "projector": {"type": "C2CProjector", "params": PARAMS}, "mapping": "last_aligned"},
        "training": {"learning_rate": 1e-4, "seed": 42},
        "output": {"output_dir": "local/checkpoints/tiny"},
        "data": {"type": "OpenHermesChatDataset"},
    }
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(recipe, f, indent=4)

    torch.manual_seed(20260514)
    manifest = {"torch": torch.__version__, "dims": dict(DIMS, hidden_dim=PARAMS["hidden_dim"], intermediate_dim=PARAMS["intermediate_dim"],
                             num_layers=PARAMS["num_layers"]), "projectors": []}
    for i in range(RECEIVER_LAYERS):
        dtype = torch.float32 if i == 2 else torch.bfloat16
        params = dict(PARAMS, dtype=dtype)
        proj = create_projector("C2CProjector", **DIMS, **params)
        with torch.no_grad():
            proj.key_gate_logit.fill_(GATES[i][0])
            proj.value_gate_logit.fill_(GATES[i][1])
            proj.gate_temperature.fill_(0.001)
        torch.save(proj.state_dict(), os.path.join(final, f"projector_{i}.pt"))
        save_projector(proj, os.path.join(final, f"projector_{i}.json"))
        sd = torch.load(os.path.join(final, f"projector_{i}.pt"), weights_only=True)
        tensors = []
        for name, t in sd.items():
            if name == "gate_temperature":
                continue
            b = t.to(torch.bfloat16).contiguous().reshape(-1)
            tensors.append({"name": name, "shape": list(t.shape),
                            "crc32": zlib.crc32(b.view(torch.uint16).numpy().tobytes())})
        manifest["projectors"].append({
            "dtype": str(dtype).split(".")[-1], "tensors": tensors,
            "gates": [float(sd["key_gate_logit"].to(torch.bfloat16)), float(sd["value_gate_logit"].to(torch.bfloat16))]})

    holder = types.SimpleNamespace(projector_dict={})
    mapping = last_aligned_sources(RECEIVER_LAYERS, SHARER_LAYERS, 1)
    for t, sources in mapping.items():
        for s in sources:
            RosettaModel.set_projector_config(holder, source_model_idx=1, source_model_layer_idx=s,
                                              target_model_idx=0, target_model_layer_idx=t, projector_idx=t)
    RosettaModel.save_projector_config(holder, os.path.join(final, "projector_config.json"))
    manifest["mapping"] = [[mapping[t][0], t] for t in range(RECEIVER_LAYERS)]
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print("wrote", args.out, "mapping", mapping)


if __name__ == "__main__":
    main()
