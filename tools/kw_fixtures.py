"""kw_fixtures.py: what the fixture scripts in tools/ share (imported by them; not run by itself, never by the tests).

  write_kwfx(path, arrays)                the KWFX reference-array file that tests/model/model_fixture.c reads
  randomize_norms_and_biases(model, seed) redraws the parameters HF initialises to constants, so each one matters
  add_reference_args(parser)              --c2c-src and --wrapper, for the scripts that run the C2C reference
  load_reference_wrapper(c2c_src, path)   puts the reference checkout on sys.path, imports its d03cc7b wrapper.py
  relative_top2_margin(rows)              the smallest top-2 logit gap over generation steps, relative to the step

KWFX layout (all little-endian): "KWFX", u32 version 1, u32 n_arrays, u32 0; then per array: u32 name_len, the ASCII
name (no NUL, shorter than 64 bytes), u32 dtype (0 = f32, 3 = i32, as enum kw_dtype), u32 ndim, i64 shape[ndim]
(outermost first), then the row-major data. A 0-d array is stored with shape (1,).
"""
import importlib.util
import os
import struct
import sys

import numpy as np


def write_kwfx(path, arrays):
    """Writes [(name, array), ...] (float32 or int32 arrays, or values np.asarray turns into them) to path."""
    with open(path, "wb") as f:
        f.write(b"KWFX" + struct.pack("<III", 1, len(arrays), 0))
        for name, arr in arrays:
            arr = np.asarray(arr)
            if arr.dtype == np.float32:
                code = 0
            elif arr.dtype == np.int32:
                code = 3
            else:
                raise ValueError(f"{name}: dtype {arr.dtype}")
            if arr.ndim == 0:
                arr = arr.reshape(1)
            nb = name.encode("ascii")
            assert len(nb) < 64, name
            f.write(struct.pack("<I", len(nb)) + nb + struct.pack("<II", code, arr.ndim))
            f.write(struct.pack("<%dq" % arr.ndim, *arr.shape))
            f.write(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())


def randomize_norms_and_biases(model, seed):
    """Norm weights uniform in [0.5, 1.5] and biases N(0, 0.1) from a generator seeded with seed + 1000: HF initialises
    them to 1 and 0, which would hide a missing norm weight or bias."""
    import torch  # only the scripts that build models need torch

    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def add_reference_args(parser):
    """The arguments of the scripts that run the C2C reference (github.com/thu-nics/C2C, package `rosetta`): a checkout
    OUTSIDE this repository, and its rosetta/model/wrapper.py as of commit d03cc7b, whose standard
    (include_response=False) path behaves as intended (c2c_spec.md §1.3: at HEAD that path raises)."""
    parser.add_argument("--c2c-src", required=True, help="checkout of github.com/thu-nics/C2C (outside this repo)")
    parser.add_argument("--wrapper", required=True, help="rosetta/model/wrapper.py as of commit d03cc7b")


def load_reference_wrapper(c2c_src, wrapper_path):
    """Puts the checkout c2c_src first on sys.path (so that `rosetta` imports from it) and imports wrapper_path as the
    module rosetta_wrapper_d03cc7b; returns that module (its RosettaModel is what the scripts call)."""
    sys.path.insert(0, os.path.abspath(c2c_src))
    spec = importlib.util.spec_from_file_location("rosetta_wrapper_d03cc7b", wrapper_path)
    wrapper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wrapper)
    return wrapper


def relative_top2_margin(rows):
    """min over the 1-D logit arrays in rows of (top-1 - top-2) / max |logit|: fp32 summation-order differences on
    the C side (~1e-6 relative) can only flip a greedy token where this is of that order."""
    return min(float((np.sort(s)[-1] - np.sort(s)[-2]) / np.abs(s).max()) for s in rows)
