#!/usr/bin/env python3
"""make_torchzip_fixtures.py: small torch.save archives for tests/c2c (accepted and must-reject), and a manifest.

Writes tests/data/c2c/pt/*.pt and tests/data/c2c/pt/manifest.json:
  {"accept": [{"file": f, "tensors": [{"name", "dtype", "shape", "crc32", "first": [up to 4 values as repr()]}]}],
   "reject": [{"file": f, "error": "KW_E_..."}]}
Every accepted file is made by torch.save itself (plus one re-zipped with Python's zipfile, to cover archives
without torch's 64-byte alignment); the must-reject files are torch.save outputs or archives whose pickle or zip
structure was altered here. The projector file is the state_dict of the reference C2CProjector (tiny dimensions),
built from the C2C reference code, which is not part of this repository: pass its checkout with --c2c.

    python3 tools/make_torchzip_fixtures.py --c2c /path/to/C2C [--torch26 DIR] [--out tests/data/c2c/pt]

With --torch26 DIR (a directory holding torch 2.6.0, the reference's pinned version, importable with PYTHONPATH=DIR),
two more accepted files are written by that torch in a subprocess: its archives have no .format_version or
.storage_alignment records and store the storages in lexicographic key order.
"""
import argparse
import collections
import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib

import torch


def tensor_record(name, t):
    t = t.detach().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    dtype = {torch.bfloat16: "bf16", torch.float32: "f32", torch.float16: "f16"}[t.dtype]
    return {"name": name, "dtype": dtype, "shape": list(t.shape), "crc32": zlib.crc32(raw),
            "first": [repr(float(x)) for x in t.flatten()[:4].float().tolist()]}


def read_entries(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def rezip(path, entries, compression=zipfile.ZIP_STORED):
    """Writes entries with Python's zipfile (no 64-byte alignment, correct CRCs)."""
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in entries:
            z.writestr(zipfile.ZipInfo(name), data, compress_type=compression)


def zip64_archive(entries, short_extra=False):
    """A stored zip written by hand with every size and offset in zip64 form: saturated 32-bit fields, zip64 extra
    fields in the local and central headers, zip64 end records (what torch's miniz does for archives past 4 GiB)."""
    out, cds = bytearray(), []
    for name, data in entries:
        nb, crc, off = name.encode(), zlib.crc32(data), len(out)
        extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(nb),
                           len(extra)) + nb + extra + data
        cds.append((nb, crc, len(data), off))
    cd_off = len(out)
    for nb, crc, size, off in cds:
        extra = struct.pack("<HHQQQ", 1, 24, size, size, off)
        if short_extra:
            extra = struct.pack("<HHQQ", 1, 16, size, size)  # the offset is saturated but missing here
        out += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                           len(nb), len(extra), 0, 0, 0, 0, 0xFFFFFFFF) + nb + extra
    cd_size, z64, n = len(out) - cd_off, len(out), len(cds)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, cd_size, cd_off)
    out += struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return bytes(out)


def replace_entry(entries, suffix, data):
    return [(n, data if n.endswith(suffix) else d) for n, d in entries]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--c2c", required=True, help="checkout of github.com/thu-nics/C2C (for C2CProjector)")
    ap.add_argument("--torch26", help="directory with torch 2.6 (PYTHONPATH) to write the legacy-layout files")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "c2c", "pt"))
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.c2c))
    from rosetta.model.projector import C2CProjector  # noqa: E402  (reference code, run from its checkout)

    os.makedirs(args.out, exist_ok=True)
    for f in os.listdir(args.out):
        if f.endswith(".pt"):
            os.remove(os.path.join(args.out, f))
    g = torch.Generator().manual_seed(1234)
    accept, reject = [], []

    def save_accept(fname, sd, **kw):
        path = os.path.join(args.out, fname)
        torch.save(sd, path, **kw)
        back = torch.load(path, weights_only=True)
        assert list(back.keys()) == list(sd.keys())
        accept.append({"file": fname, "tensors": [tensor_record(k, v) for k, v in back.items()]})
        return path

    def save_reject(fname, obj_or_none, error, **kw):
        if obj_or_none is not None:
            torch.save(obj_or_none, os.path.join(args.out, fname), **kw)
        reject.append({"file": fname, "error": error})

    # --- accepted -------------------------------------------------------------------------------------------------
    sd = collections.OrderedDict()
    sd["scalar"] = torch.tensor(0.75, dtype=torch.bfloat16)
    sd["vec"] = torch.randn(7, generator=g).to(torch.bfloat16)
    sd["mat"] = torch.randn(3, 5, generator=g).to(torch.bfloat16)
    sd["cube"] = torch.randn(2, 1, 3, generator=g).to(torch.bfloat16)
    sd["five_d"] = torch.randn(1, 2, 1, 2, 3, generator=g).to(torch.bfloat16)
    sd["empty"] = torch.zeros(0, 4, dtype=torch.bfloat16)
    save_accept("bf16.pt", sd)

    sd = collections.OrderedDict(
        [("w", torch.randn(4, 3, generator=g)), ("b", torch.randn(4, generator=g)), ("s", torch.tensor(-2.5)),
         ("neg_zero", torch.tensor([-0.0, float("inf"), float("-inf"), 1e-40]))])
    save_accept("f32.pt", sd)
    save_accept("f16.pt", {"h": torch.randn(2, 3, generator=g).half(), "one": torch.ones(1, dtype=torch.half)})

    # An nn.Module state_dict: OrderedDict with _metadata (BUILD), bf16.
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.RMSNorm(4)).to(torch.bfloat16)
    save_accept("module.pt", module.state_dict())

    # The reference projector's own state_dict with tiny dimensions (33 entries, the released key layout).
    torch.manual_seed(7)
    proj = C2CProjector(source_dim=4, target_dim=8, source_num_heads=2, target_num_heads=2, hidden_dim=16,
                        intermediate_dim=12, num_layers=3, dtype=torch.bfloat16)
    with torch.no_grad():
        proj.key_gate_logit.fill_(0.5)
        proj.value_gate_logit.fill_(-0.25)
    save_accept("projector.pt", proj.state_dict())

    # Shared storage and a view with a storage offset; requires_grad=True; many entries (LONG_BINPUT memo);
    # large sizes on empty tensors (BININT2, BININT, LONG1 in size/stride tuples).
    base = torch.randn(4, 6, generator=g).to(torch.bfloat16)
    many = collections.OrderedDict()
    many["base"] = base
    many["row2"] = base[2]
    many["tied"] = base
    many["grad"] = torch.ones(3, requires_grad=True)
    many["wide"] = torch.zeros(0, 300, dtype=torch.bfloat16)
    many["wider"] = torch.zeros(0, 70000, dtype=torch.bfloat16)
    many["widest"] = torch.zeros(0, 2 ** 31 + 5, dtype=torch.bfloat16)
    for i in range(120):
        many[f"t{i}"] = torch.full((2,), float(i), dtype=torch.bfloat16)
    save_accept("shared_and_many.pt", many)

    # Files written by torch 2.6 (the reference's version), if available: the reference projector and a mixed dict.
    if args.torch26:
        code = f"""
import sys, collections, torch
sys.path.insert(0, {os.path.abspath(args.c2c)!r})
from rosetta.model.projector import C2CProjector
assert torch.__version__.startswith("2.6."), torch.__version__
torch.manual_seed(11)
p = C2CProjector(source_dim=4, target_dim=8, source_num_heads=2, target_num_heads=2, hidden_dim=16,
                 intermediate_dim=12, num_layers=4, dtype=torch.bfloat16)
torch.save(p.state_dict(), {os.path.join(args.out, "torch26_projector.pt")!r})
b = torch.randn(3, 5).to(torch.bfloat16)
torch.save(collections.OrderedDict([("b", b), ("row", b[1]), ("f", torch.randn(2, 2)), ("s", torch.tensor(3.0))]
                                   + [(f"k{{i}}", torch.full((1,), float(i))) for i in range(12)]),
           {os.path.join(args.out, "torch26_mixed.pt")!r})
"""
        env = dict(os.environ, PYTHONPATH=os.path.abspath(args.torch26))
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
        for fname in ("torch26_projector.pt", "torch26_mixed.pt"):
            back = torch.load(os.path.join(args.out, fname), weights_only=True)
            names = [i.filename for i in zipfile.ZipFile(os.path.join(args.out, fname)).infolist()]
            assert not any(n.endswith(".format_version") for n in names), names
            accept.append({"file": fname, "tensors": [tensor_record(k, v) for k, v in back.items()]})

    # The same bf16 archive re-written by zipfile: unaligned storages, no torch records except byteorder.
    entries = read_entries(os.path.join(args.out, "bf16.pt"))
    kept = [(n, d) for n, d in entries if n.endswith("data.pkl") or "/data/" in n]
    rezip(os.path.join(args.out, "rezipped.pt"), kept)
    accept.append({"file": "rezipped.pt", "tensors": accept[0]["tensors"]})

    # f32.pt in full zip64 form; torch must read it too.
    z64_path = os.path.join(args.out, "zip64.pt")
    open(z64_path, "wb").write(zip64_archive(read_entries(os.path.join(args.out, "f32.pt"))))
    back = torch.load(z64_path, weights_only=True)
    accept.append({"file": "zip64.pt", "tensors": [tensor_record(k, v) for k, v in back.items()]})
    assert accept[-1]["tensors"] == accept[1]["tensors"]

    # --- must reject --------------------------------------------------------------------------------------------
    open(os.path.join(args.out, "zip64_short_extra.pt"), "wb").write(
        zip64_archive(read_entries(os.path.join(args.out, "f32.pt")), short_extra=True))
    reject.append({"file": "zip64_short_extra.pt", "error": "KW_E_PT_FORMAT"})
    save_reject("int64.pt", {"i": torch.arange(4)}, "KW_E_PT_PICKLE")                 # torch.LongStorage
    save_reject("bool.pt", {"m": torch.tensor([True, False])}, "KW_E_PT_PICKLE")      # torch.BoolStorage
    save_reject("parameter.pt", module.state_dict(keep_vars=True), "KW_E_PT_PICKLE")  # _rebuild_parameter
    save_reject("non_tensor.pt", {"a": torch.ones(1), "n": 3}, "KW_E_PT_PICKLE")
    save_reject("list_root.pt", [torch.ones(1)], "KW_E_PT_PICKLE")
    save_reject("protocol4.pt", {"a": torch.ones(2)}, "KW_E_PT_PICKLE", pickle_protocol=4)  # FRAME etc.
    save_reject("transposed.pt", {"t": torch.randn(3, 4, generator=g).t()}, "KW_E_PT_FORMAT")  # not contiguous
    save_reject("legacy.pt", {"a": torch.ones(2)}, "KW_E_PT_FORMAT", _use_new_zipfile_serialization=False)

    good = read_entries(os.path.join(args.out, "f32.pt"))
    pkl = [d for n, d in good if n.endswith("data.pkl")][0]

    # An opcode outside the accepted set (APPEND after an EMPTY_LIST, valid pickle otherwise).
    bad = pkl[:2] + b"]K\x01a0" + pkl[2:]
    rezip(os.path.join(args.out, "bad_opcode.pt"), replace_entry(good, "data.pkl", bad))
    reject.append({"file": "bad_opcode.pt", "error": "KW_E_PT_PICKLE"})
    # A dangerous global.
    evil = b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R."
    rezip(os.path.join(args.out, "evil_global.pt"), replace_entry(good, "data.pkl", evil))
    reject.append({"file": "evil_global.pt", "error": "KW_E_PT_PICKLE"})
    # A pickle cut in the middle (STOP missing), and one with bytes after STOP.
    rezip(os.path.join(args.out, "pickle_cut.pt"), replace_entry(good, "data.pkl", pkl[: len(pkl) // 2]))
    reject.append({"file": "pickle_cut.pt", "error": "KW_E_PT_PICKLE"})
    rezip(os.path.join(args.out, "pickle_trailing.pt"), replace_entry(good, "data.pkl", pkl + b"N"))
    reject.append({"file": "pickle_trailing.pt", "error": "KW_E_PT_PICKLE"})
    # Storage record shorter than numel * 4, and missing.
    rezip(os.path.join(args.out, "short_storage.pt"), replace_entry(good, "/data/0", b"\0" * 8))
    reject.append({"file": "short_storage.pt", "error": "KW_E_PT_FORMAT"})
    rezip(os.path.join(args.out, "missing_storage.pt"), [(n, d) for n, d in good if not n.endswith("/data/1")])
    reject.append({"file": "missing_storage.pt", "error": "KW_E_PT_FORMAT"})
    # Shape larger than the storage: "w" of size (4, 3), stride (3, 1) becomes size (4, 4), stride (4, 1).
    i = pkl.index(b"K\x04K\x03\x86")
    j = pkl.index(b"K\x03K\x01\x86", i)
    bad = pkl[:i] + b"K\x04K\x04\x86" + pkl[i + 5:j] + b"K\x04K\x01\x86" + pkl[j + 5:]
    rezip(os.path.join(args.out, "shape_mismatch.pt"), replace_entry(good, "data.pkl", bad))
    reject.append({"file": "shape_mismatch.pt", "error": "KW_E_PT_FORMAT"})
    # Compressed entries, big-endian byteorder, no data.pkl.
    rezip(os.path.join(args.out, "deflated.pt"), good, compression=zipfile.ZIP_DEFLATED)
    reject.append({"file": "deflated.pt", "error": "KW_E_PT_FORMAT"})
    rezip(os.path.join(args.out, "big_endian.pt"), replace_entry(good, "byteorder", b"big"))
    reject.append({"file": "big_endian.pt", "error": "KW_E_UNSUPPORTED"})
    rezip(os.path.join(args.out, "no_pickle.pt"), [(n, d) for n, d in good if not n.endswith("data.pkl")])
    reject.append({"file": "no_pickle.pt", "error": "KW_E_PT_FORMAT"})

    # Byte-level damage to a torch-written archive: CRC (a data byte flipped), central directory signature, central
    # directory offset, entry count, a local header offset, truncations.
    raw = open(os.path.join(args.out, "f32.pt"), "rb").read()
    eocd = raw.rindex(b"PK\x05\x06")
    cd_off = struct.unpack_from("<I", raw, eocd + 16)[0]
    name_pos = raw.index(b"/data/0")
    loc = raw.rfind(b"PK\x03\x04", 0, name_pos)
    data_pos = loc + 30 + struct.unpack_from("<H", raw, loc + 26)[0] + struct.unpack_from("<H", raw, loc + 28)[0]

    def damaged(fname, blob, error):
        open(os.path.join(args.out, fname), "wb").write(blob)
        reject.append({"file": fname, "error": error})

    damaged("crc.pt", raw[:data_pos] + bytes([raw[data_pos] ^ 1]) + raw[data_pos + 1:], "KW_E_PT_FORMAT")
    damaged("cd_signature.pt", raw[:cd_off] + b"PK\x01\x03" + raw[cd_off + 4:], "KW_E_PT_FORMAT")
    bad_off = bytearray(raw)
    struct.pack_into("<I", bad_off, eocd + 16, cd_off + 1)
    damaged("cd_offset.pt", bytes(bad_off), "KW_E_PT_FORMAT")
    bad_count = bytearray(raw)
    n = struct.unpack_from("<H", raw, eocd + 10)[0]
    struct.pack_into("<HH", bad_count, eocd + 8, n + 1, n + 1)
    damaged("cd_count.pt", bytes(bad_count), "KW_E_PT_FORMAT")
    bad_local = bytearray(raw)
    struct.pack_into("<I", bad_local, cd_off + 42, 7)  # first entry's local header offset
    damaged("local_offset.pt", bytes(bad_local), "KW_E_PT_FORMAT")
    for cut in (0, 10, len(raw) // 3, len(raw) // 2, cd_off, cd_off + 30, len(raw) - 22, len(raw) - 1):
        damaged(f"truncated_{cut}.pt", raw[:cut], "KW_E_PT_FORMAT")
    damaged("not_zip.pt", b"hello world, this is not a torch checkpoint at all" * 2, "KW_E_PT_FORMAT")

    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump({"accept": accept, "reject": reject}, f, indent=1)
    total = sum(os.path.getsize(os.path.join(args.out, x)) for x in os.listdir(args.out))
    print(f"torch {torch.__version__}: {len(accept)} accepted and {len(reject)} rejected files, {total} bytes")


if __name__ == "__main__":
    main()
