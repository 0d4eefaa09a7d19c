#!/usr/bin/env bash
# check_layering.sh KVWIRE SOURCE_DIR BUILD_DIR: enforces the dependency arrows of DESIGN.md on #include lines.
# A folder may include only headers of the folders listed for it below (and its own, and system headers), plus the
# single headers listed for it in allowed_headers.
set -u
src=$2
declare -A allowed=(
    [common]="common"
    [kernels]="common kernels"
    [wire]="common wire"
    [model]="common kernels model"
    [c2c]="common kernels model c2c"
    [proto]="common proto"
    [net]="common net"
    [sharer]="common kernels model c2c wire proto net sharer"
    [receiver]="common kernels model c2c wire proto net receiver"
    [loadgen]="common net proto loadgen"
)
# kvload builds the reference's prompts and extracts answers on the client (receiverd serves the OpenAI API, which
# takes text, not dataset items): it may use c2c's evaluation blocks, which depend on common/ only (the kw_c2c_eval
# library), and nothing else of c2c/.
# kernels/cuda runs the KVWire codec math on the GPU: the KW_HD header wire/kw_wire_quant.h (DESIGN: math both sides
# need lives in __host__ __device__ inline headers), which itself depends on common/ only; nothing else of wire/.
declare -A allowed_headers=(
    [loadgen]="c2c/kw_prompt.h c2c/kw_answer.h"
    [kernels]="wire/kw_wire_quant.h"
)
status=0
for dir in "${!allowed[@]}"; do
    [ -d "$src/$dir" ] || continue
    while IFS= read -r line; do
        file=${line%%:*}
        inc=$(echo "$line" | sed -E 's/.*#include *"([^"]+)".*/\1/')
        top=${inc%%/*}
        [ "$top" = "$inc" ] && continue # same-folder include without a path
        ok=0
        for a in ${allowed[$dir]}; do [ "$top" = "$a" ] && ok=1; done
        for h in ${allowed_headers[$dir]:-}; do [ "$inc" = "$h" ] && ok=1; done
        if [ $ok = 0 ]; then
            echo "layering violation: $file includes \"$inc\" ($dir/ may include only: ${allowed[$dir]})"
            status=1
        fi
    done < <(grep -rnE '^\s*#\s*include\s*"' "$src/$dir" --include='*.c' --include='*.h' --include='*.cu' --include='*.cuh' --include='*.cpp' | sed -E 's/^([^:]+):[0-9]+:/\1:/')
done
# sharer/ and receiver/ must never include each other.
for pair in "sharer receiver" "receiver sharer"; do
    set -- $pair
    if [ -d "$src/$1" ] && grep -rqE "#\s*include\s*\"$2/" "$src/$1"; then
        echo "layering violation: $1/ includes $2/"
        status=1
    fi
done
[ $status = 0 ] && echo "layering: ok"
exit $status
