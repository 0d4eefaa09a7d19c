#!/usr/bin/env bash
# cli_bench_kernels.sh KVWIRE SRC BUILD: the A/B modes of `kvwire bench kernels`, one quick rep on one thread:
# --quantized prints its six parts (exact vs x8, sb, s6; x8 vs x8sb, x8s6; exact Q8_0 vs x8q8), each with decode
# (M 1) and prefill (M 128) rows of gate/up and down per layout pair, every time, gain and GB/s positive; --bf16-pair
# prints its twelve decode shapes the same way; the two together are a usage error (exit 2).
set -u
kvwire=$1
fail() { echo "FAIL: $*"; echo "$out"; exit 1; }
# "rows per part, space-separated|bad rows": a part is a "== " header, its column header, then rows whose last nf
# fields must be numbers > 0 (a gain ends in "x")
parts() {
    awk -v nf="$1" '
        /^== / { n[++part] = 0; head = 1; next }
        head { head = 0; next }
        part && NF > nf { ++n[part]; for (i = NF - nf + 1; i <= NF; ++i) { v = $i; sub(/x$/, "", v); if (v + 0 <= 0) bad = bad " [" $0 "]" } }
        END { for (p = 1; p <= part; ++p) printf "%s%d", (p > 1 ? " " : ""), n[p]; printf "|%s\n", bad }'
}
out=$("$kvwire" bench kernels --quantized --quick --reps 1 --threads 1 2>&1) || fail "--quantized exit $?"
got=$(parts 4 <<<"$out")
[ "${got%%|*}" = "8 8 8 8 8 4" ] || fail "--quantized rows per part: ${got%%|*}, expected 8 8 8 8 8 4"
[ -z "${got#*|}" ] || fail "--quantized, not positive:${got#*|}"
grep -q '^== .*x8q8: S8_X8' <<<"$out" || fail "--quantized has no Q8_0 (x8q8) part"
out=$("$kvwire" bench kernels --bf16-pair --quick --reps 1 --threads 1 2>&1) || fail "--bf16-pair exit $?"
got=$(parts 5 <<<"$out")
[ "${got%%|*}" = 12 ] || fail "--bf16-pair rows: ${got%%|*}, expected one part of 12"
[ -z "${got#*|}" ] || fail "--bf16-pair, not positive:${got#*|}"
out=$("$kvwire" bench kernels --quantized --bf16-pair 2>&1)
[ $? -eq 2 ] || fail "--quantized with --bf16-pair is not a usage error"
echo ok
