#!/usr/bin/env bash
# decode_shares.sh KVWIRE [RUNS]: where a decode's CPU time goes outside the layer GEMVs, as perf samples of the ops
# around them over the GEMV kernel's own samples (so a share does not move with how much of the run was load, bench
# reads or descheduled time: a loaded machine still compares builds). Each run is `perf record` of `KVWIRE bench model
# --prompt-len 1 --decode 128` (MODEL, WEIGHTS and GEMV as below); it prints, per run, the GEMV's share of all
# samples and each op's samples over the GEMV's: attention (kw_attn_item + kw_attn_out_heads), the pool's waiting
# (kw_pool_wait_change: the spin of a thread with nothing to do), RoPE (its sin/cos/pow and rows), RMSNorm rows,
# argmax, the bulk f32 -> bf16/f16 conversion (x rounded for the GEMV, the KV store). Not part of CI; needs perf.
# Environment: MODEL (default the peer script's Qwen3-0.6B-shaped BF16 file), WEIGHTS (default bf16-act), GEMV (the
# kernel symbol, default kw_bf16_panel_avx512; `nm` the binary for the others, e.g. the kw_x8_panel_vnni_* of the
# int8-activation layouts), DECODE (default 128).
set -euo pipefail
bin=$1
runs=${2:-2}
case $runs in '' | *[!0-9]* | 0)
    echo "decode_shares.sh: RUNS must be a positive integer" >&2
    exit 2
    ;;
esac
model=${MODEL:-$HOME/.cache/kvwire/peer/models/qwen3-0.6b-bf16.gguf}
gemv=${GEMV:-kw_bf16_panel_avx512}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for i in $(seq 1 "$runs"); do
    perf record -q -F 4000 -o "$dir/p.data" "$bin" bench model --model "$model" --weights "${WEIGHTS:-bf16-act}" \
        --prompt-len 1 --decode "${DECODE:-128}" --reps 1 --bw-mib 32 >/dev/null 2>&1
    perf report -i "$dir/p.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' | grep '%' |
        awk -v g="$gemv" '
        { sub("%", "", $1); v[$3] += $1 }
        END {
            p = v[g]
            if (p <= 0) { print "decode_shares.sh: no samples of " g; exit 2 }
            printf "gemv %5.2f%% of samples; over it: attention %.4f wait %.4f rope %.4f rms_norm %.4f argmax %.4f from_f32 %.4f\n",
                p, (v["kw_attn_item_avx512"] + v["kw_attn_out_heads_avx512"]) / p, v["kw_pool_wait_change.part.0"] / p,
                (v["__sincos_fma"] + v["__ieee754_pow_fma"] + v["__sin_fma"] + v["__cos_fma"] + v["kw_rope_rows"]) / p,
                v["kw_rms_rows"] / p, v["kw_argmax_rows"] / p, (v["kw_from_f32_avx512"] + v["kw_from_f32_avx2"]) / p
        }'
done
