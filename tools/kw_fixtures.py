"""kw_fixtures.py: what the fixture scripts in tools/ share (imported by them; not run by itself, never by the tests).

  write_kwfx(path, arrays)                the KWFX reference-array file that tests/model/model_fixture.c reads
  randomize_norms_and_biases(model, seed) redraws the parameters HF initialises to constants, so each one matters

KWFX layout (all little-endian): "KWFX", u32 version 1, u32 n_arrays, u32 0; then per array: u32 name_len, the ASCII
name (no NUL, shorter than 64 bytes), u32 dtype (0 = f32, 3 = i32, as enum kw_dtype), u32 ndim, i64 shape[ndim]
(outermost first), then the row-major data. A 0-d array is stored with shape (1,).
"""
import struct

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
