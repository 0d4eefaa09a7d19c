#!/usr/bin/env bash
# ab_codec.sh A_KVWIRE B_KVWIRE [ROUNDS] [BENCH ARGS...]: `kvwire bench codec` of two builds run in turn, A B A B ...,
# with the same arguments (default --reps 5), and per codec row the median over the rounds of each build's ratios to
# memcpy (encode / decode to bf16 / decode to f32, each measured against memcpy in the same run), then B's smallest
# ratio over the rounds: a goal is met in every round only if that one meets it. Used for the codec speed sections
# of docs/BENCHMARKS.md (A: the build before a change, B: after it; --isa avx2 for the AVX2 path). A_KVWIRE or B_KVWIRE
# may start with NAME=VALUE words, run through env, to compare two settings of one build ("KWX_X=1 build/tools/kvwire").
set -euo pipefail
a=$1
b=$2
rounds=${3:-3}
shift $(($# < 3 ? $# : 3))
args=(bench codec "$@")
[ $# -gt 0 ] || args+=(--reps 5)
runs=$(mktemp)
trap 'rm -f "$runs"' EXIT
for r in $(seq 1 "$rounds"); do
    for side in A B; do
        bin=$a
        [ "$side" = B ] && bin=$b
        # rows: a 22-column name, then memcpy, enc, x, dec->bf16, x, dec->f32, x, ...
        # shellcheck disable=SC2086 # word splitting is the point: NAME=VALUE words, then the binary
        env $bin "${args[@]}" | awk -v side="$side" -v r="$r" '
            NR > 2 && NF >= 12 && substr($0, 24) ~ /^ *[0-9]/ {
                name = substr($0, 1, 22)
                sub(/ +$/, "", name)
                gsub(/ /, "_", name)
                split(substr($0, 24), f, " ")
                print side, r, name, f[3], f[5], f[7]
            }' >>"$runs"
    done
done
echo "kvwire ${args[*]}: $rounds rounds A B A B, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-24s %-20s %-20s %-20s\n' "codec (x memcpy)" "A median enc/bf16/f32" "B median enc/bf16/f32" "B worst round"
awk '
    function median(list, n,    v, i, j, t) {
        n = split(list, v, " ")
        for (i = 2; i <= n; ++i)
            for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; --j) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
        return n % 2 ? v[(n + 1) / 2] : sprintf("%.2f", (v[n / 2] + v[n / 2 + 1]) / 2)
    }
    {
        if (!($3 in seen)) { seen[$3] = 1; order[++rows] = $3 }
        for (k = 4; k <= 6; ++k) {
            key = $1 SUBSEP $3 SUBSEP k
            vals[key] = vals[key] " " $k
            wkey = $3 SUBSEP k
            if ($1 == "B" && (!(wkey in worst) || $k + 0 < worst[wkey] + 0)) worst[wkey] = $k
        }
    }
    END {
        for (i = 1; i <= rows; ++i) {
            n = order[i]
            am = median(vals["A", n, 4]) " / " median(vals["A", n, 5]) " / " median(vals["A", n, 6])
            bm = median(vals["B", n, 4]) " / " median(vals["B", n, 5]) " / " median(vals["B", n, 6])
            bw = worst[n, 4] " / " worst[n, 5] " / " worst[n, 6]
            label = n
            gsub(/_/, " ", label)
            printf "%-24s %-20s %-20s %-20s\n", label, am, bm, bw
        }
    }' "$runs"
