#!/usr/bin/env python3
"""wire_entropy.py KVWIRE DIR: for blob pairs DIR/<name>z0.0.kvw (no zstd) and DIR/<name>z19.0.kvw (zstd level 19)
of the same request, as `kvwire c2c --wire-zstd 0|19 --wire-dump DIR/<name>z0|z19` writes them (and DIR/<name>r.0.kvw,
`--wire-rans --wire-dump DIR/<name>r`, where present), prints bits per KV element of the blobs as sent without and
with zstd (and with the rANS body coder), and of the blobs with their codes at the order-0 entropy that
`kvwire inspect --json` reports (each tensor's own table, not counted) and everything else raw: what a static entropy
coder of the codes could reach against zstd, on real KV. A bound computed from the codes, not a coder."""
import glob
import json
import subprocess
import sys


def inspect(kvwire, path):
    out = subprocess.run([kvwire, "inspect", "--json", path], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["breakdown"]


def main():
    kvwire, folder = sys.argv[1], sys.argv[2]
    elements = raw = zstd = rans = payload = entropy = 0.0
    n_rans = 0
    plain = sorted(glob.glob(folder + "/*z0.0.kvw"))
    if not plain:
        sys.exit("wire_entropy.py: no *z0.0.kvw blobs in " + folder)
    for path in plain:
        a, b = inspect(kvwire, path), inspect(kvwire, path.replace("z0.0.kvw", "z19.0.kvw"))
        elements += a["kv_elements"]
        raw += a["total"]
        zstd += b["total"]
        payload += a["payload"]
        entropy += a["code_entropy_bits"] / 8
        try:
            rans += inspect(kvwire, path.replace("z0.0.kvw", "r.0.kvw"))["total"]
            n_rans += 1
        except (subprocess.CalledProcessError, FileNotFoundError):
            pass
    print("%d blobs, %d KV elements: %.3f bits/elem raw, %.3f with zstd 19, %.3f with the codes at their order-0 "
          "entropy (the rest raw)" % (len(plain), elements, 8 * raw / elements, 8 * zstd / elements,
                                      8 * (raw - payload + entropy) / elements))
    if n_rans == len(plain):
        print("with the rANS body coder: %.3f bits/elem" % (8 * rans / elements))


if __name__ == "__main__":
    main()
