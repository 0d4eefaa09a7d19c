#!/usr/bin/env bash
# bf16act.sh [MODELS] [ROUNDS]: kvwire's BF16 prefill, exact (--weights bf16) and with bf16 activations (--weights
# bf16-act), against llama.cpp's BF16, interleaved (exact, bf16-act, llama.cpp per round) on the BF16 GGUF files that
# llamacpp.sh made (run it first). Not part of CI. MODELS comma-separated (default "qwen3-0.6b,smollm2"), ROUNDS
# (default 3); THREADS (2), KVWIRE (build/tools/kvwire), PEER_CACHE and LLAMACPP_PY_VERSION as llamacpp.sh.
# Per round: prefill of 512 tokens and decode of 128 at context 0, in tok/s; then the medians and their ratios.
set -euo pipefail
peer_name=bf16act.sh
. "$(dirname "$0")/peer_lib.sh"
lbench=$build/bin/llama-bench
peer_need_kvwire
peer_need "$lbench"
kw() { # file weights -> "prefill decode": prefill of 512, then decode of 128 at context 0 (as llama-bench's tg128)
    local pp tg
    pp=$("$kvwire" bench model --model "$1" --weights "$2" --threads "$threads" --prompt-len 512 --decode 1 --reps 1)
    tg=$("$kvwire" bench model --model "$1" --weights "$2" --threads "$threads" --prompt-len 1 --decode 128 --reps 1)
    echo "$(echo "$pp" | sed -n 's/^prefill: .* = \([0-9.]*\) tok\/s.*/\1/p')" \
        "$(echo "$tg" | sed -n 's/^decode: .* = \([0-9.]*\) tok\/s.*/\1/p')"
}
lc() { # file -> "prefill decode"
    "$lbench" -m "$1" -t "$threads" -p 512 -n 128 -r 1 -o csv 2>/dev/null | python3 -c '
import csv, sys
pp = tg = None
for row in csv.DictReader(sys.stdin):
    if int(row["n_prompt"]) > 0: pp = row["avg_ts"]
    else: tg = row["avg_ts"]
print(pp, tg)'
}
echo "# $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), avx512_bf16: $(grep -qw avx512_bf16 /proc/cpuinfo &&
    echo yes || echo no), $threads threads, $(date -u '+%F %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
IFS=, read -r -a models <<<"${1:-qwen3-0.6b,smollm2}"
for m in "${models[@]}"; do
    file=$mdir/$m-bf16.gguf
    echo "## $m bf16: round, prefill512 exact / bf16-act / llama.cpp, decode@0 exact / bf16-act / llama.cpp (tok/s)"
    pe=() pa=() pl=() de=() da=() dl=()
    for i in $(seq 1 "${2:-3}"); do
        read -r a b <<<"$(kw "$file" bf16)"
        pe+=("$a") de+=("$b")
        read -r a b <<<"$(kw "$file" bf16-act)"
        pa+=("$a") da+=("$b")
        read -r a b <<<"$(lc "$file")"
        pl+=("$a") dl+=("$b")
        echo "$i ${pe[-1]} ${pa[-1]} ${pl[-1]} ${de[-1]} ${da[-1]} ${dl[-1]}"
    done
    read -r e a l <<<"$(printf '%s\n' "${pe[@]}" | median) $(printf '%s\n' "${pa[@]}" | median) $(printf '%s\n' "${pl[@]}" | median)"
    read -r f b d <<<"$(printf '%s\n' "${de[@]}" | median) $(printf '%s\n' "${da[@]}" | median) $(printf '%s\n' "${dl[@]}" | median)"
    awk -v e="$e" -v a="$a" -v l="$l" -v f="$f" -v b="$b" -v d="$d" 'BEGIN {printf "median: prefill exact/llama.cpp %.2f, " \
        "bf16-act/llama.cpp %.2f, bf16-act/exact %.2f; decode exact/llama.cpp %.2f, bf16-act/llama.cpp %.2f\n",
        e / l, a / l, a / e, f / d, b / d}'
    echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
done
