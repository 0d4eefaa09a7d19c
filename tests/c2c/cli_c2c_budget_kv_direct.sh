#!/usr/bin/env bash
# cli_c2c_budget_kv_direct.sh: `kvwire c2c --mode kv_direct --budget-bytes N` on a tiny generated model: over caps
# from generous down to the request's minimum the --wire-dump blob is valid (kvwire inspect), at most the cap and the
# reported bytes; the receiver accepts it (it refuses a layer whose positions differ from the first layer's), every
# layer carries the same token count and the histogram adds up over the layers; a generous cap sends everything
# lossless; the minimum is accepted and one byte less refused naming it; the allocation is the same bytes with
# KW_CPU_ISA=scalar and avx2 and with 1 and 2 threads.
# Arguments: kvwire binary, source dir, build dir.
# shellcheck source=../cli_lib.sh
. "$(dirname "$0")/../cli_lib.sh" "$@"

"$kvwire" gen-model --arch qwen3 --preset tiny --layers 3 --seed 1 --tokenizer "$src/models/tokenizers/qwen3" \
    --out recv >/dev/null
item='{"question": "Which planet is known as the red planet?", "choices": ["Venus", "Mars", "Jupiter", "Saturn"]}'
run() { "$kvwire" c2c --receiver recv --mode kv_direct --threads 2 --mc-json "$item" --max-new-tokens 2 "$@"; }


min=""
for cap in 1000000 20000 6000 3000 1500 800; do
    run --select vnorm_topk --budget-bytes "$cap" --wire-dump "d$cap" >"c$cap.txt" || fail "cap $cap: refused"
    used=$(budget_word "c$cap.txt" used)
    "$kvwire" inspect "d$cap.0.kvw" >"i$cap.txt" || fail "cap $cap: inspect rejected the blob"
    [ "$(stat -c %s "d$cap.0.kvw")" = "$used" ] || fail "cap $cap: the blob is not the $used bytes reported"
    [ "$used" -le "$cap" ] || fail "cap $cap: $used bytes used"
    [ "$(budget_word "c$cap.txt" slack)" = $((cap - used)) ] || fail "cap $cap: slack"
    # one token count for every layer (the section lines of kvwire inspect: sec offset bytes layer tokens ...)
    counts=$(awk '$1 ~ /^[0-9]+$/ && $2 ~ /^[0-9]+$/ && NF >= 9 { print $5 }' "i$cap.txt" | sort -u)
    [ "$(echo "$counts" | wc -l)" = 1 ] || fail "cap $cap: layers keep different token counts: $counts"
    [ "$(awk '$1 ~ /^[0-9]+$/ && $2 ~ /^[0-9]+$/ && NF >= 9' "i$cap.txt" | wc -l)" = 3 ] || fail "cap $cap: not every layer was sent"
    kept=$(budget_kept "c$cap.txt")
    [ "$kept" = $((counts * 3)) ] || fail "cap $cap: $kept kept tokens over the layers, not 3 x $counts"
    min=$(budget_word "c$cap.txt" min)
done
budget_check_ends c1000000.txt c800.txt
budget_check_minimum "$min" 800

# the same allocation on every ISA and thread count (zstd and two codecs that upgrade per layer included)
for run_as in scalar:1 avx2:2 avx2:1; do
    isa=${run_as%:*} t=${run_as#*:}
    KW_CPU_ISA=$isa "$kvwire" c2c --receiver recv --mode kv_direct --threads $t --mc-json "$item" --max-new-tokens 2 \
        --select knorm_topk --budget-bytes 4000 --budget-codecs int4,int8 --wire-gran group16 --wire-zstd 3 \
        --wire-dump "i$isa$t" >"i$isa$t.txt"
    cmp "i$isa$t.0.kvw" iscalar1.0.kvw || fail "KW_CPU_ISA=$isa --threads $t gave other blob bytes"
    diff <(grep -E '^(budget|answer)' "i$isa$t.txt") <(grep -E '^(budget|answer)' iscalar1.txt) \
        || fail "KW_CPU_ISA=$isa --threads $t: another record"
done
echo "ok"
