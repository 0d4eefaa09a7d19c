#!/usr/bin/env bash
# cli_bench_kernels.sh KVWIRE SRC BUILD: the A/B modes of `kvwire bench kernels`, one quick rep on one thread:
# --quantized prints its six parts (exact vs x8, sb, s6; x8 vs x8sb, x8s6; exact Q8_0 vs x8q8), each with decode
# (M 1) and prefill (M 128) rows of gate/up and down per layout pair, every time and gain positive; --bf16-pair
# prints its twelve decode shapes the same way; --attention its four model shapes (prefill ms, GFLOP/s, % of sgemm,
# decode us, GB/s, % of the read bound); any two together are a usage error (exit 2).
set -u
kvwire=$1
fail() { echo "FAIL: $*"; echo "$out"; exit 1; }
# parts KINDS: "rows per part, space-separated|bad rows": a part is a "== " header, its column header, then rows whose
# last fields, one per letter of KINDS, must be numbers > 0 (p: times, gains; a gain ends in "x", a share in "%") or
# >= 0 (z: GB/s, printed to 0.01: 0.00 in a sanitizer build)
parts() {
    awk -v kinds="$1" '
        /^== / { n[++part] = 0; head = 1; next }
        head { head = 0; next }
        part && NF > length(kinds) {
            ++n[part]
            for (j = 1; j <= length(kinds); ++j) {
                v = $(NF - length(kinds) + j); sub(/[x%]$/, "", v)
                if (v !~ /^[0-9.]+$/ || (substr(kinds, j, 1) == "p" && v + 0 <= 0)) bad = bad " [" $0 "]"
            }
        }
        END { for (p = 1; p <= part; ++p) printf "%s%d", (p > 1 ? " " : ""), n[p]; printf "|%s\n", bad }'
}
out=$("$kvwire" bench kernels --quantized --quick --reps 1 --threads 1 2>&1) || fail "--quantized exit $?"
got=$(parts pppz <<<"$out") # exact us, twin us, gain, GB/s
[ "${got%%|*}" = "8 8 8 8 8 4" ] || fail "--quantized rows per part: ${got%%|*}, expected 8 8 8 8 8 4"
[ -z "${got#*|}" ] || fail "--quantized, not positive:${got#*|}"
grep -q '^== .*x8q8: S8_X8' <<<"$out" || fail "--quantized has no Q8_0 (x8q8) part"
out=$("$kvwire" bench kernels --bf16-pair --quick --reps 1 --threads 1 2>&1) || fail "--bf16-pair exit $?"
got=$(parts ppzzp <<<"$out") # bf16 us, bf16a us, two GB/s, bf16/bf16a
[ "${got%%|*}" = 12 ] || fail "--bf16-pair rows: ${got%%|*}, expected one part of 12"
[ -z "${got#*|}" ] || fail "--bf16-pair, not positive:${got#*|}"
out=$("$kvwire" bench kernels --attention --quick --reps 1 --threads 1 2>&1) || fail "--attention exit $?"
# prefill ms, GFLOP/s, % of sgemm (0% in a sanitizer build against the uninstrumented BLAS), decode us, GB/s, % of
# the read bound
got=$(parts ppzpzz <<<"$out")
[ "${got%%|*}" = 4 ] || fail "--attention rows: ${got%%|*}, expected one part of 4"
[ -z "${got#*|}" ] || fail "--attention, not positive:${got#*|}"
for shape in Qwen3-0.6B SmolLM2-135M Llama-3.2-1B Gemma-3-270M; do
    grep -q "^$shape " <<<"$out" || fail "--attention has no $shape row"
done
out=$("$kvwire" bench kernels --quantized --bf16-pair 2>&1)
[ $? -eq 2 ] || fail "--quantized with --bf16-pair is not a usage error"
out=$("$kvwire" bench kernels --bf16-pair --attention 2>&1)
[ $? -eq 2 ] || fail "--bf16-pair with --attention is not a usage error"
echo ok
