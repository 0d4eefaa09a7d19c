#!/usr/bin/env bash
# cli_c2c_budget_baselines.sh: `kvwire c2c --budget-mode kvcomm_like|qkvcomm_like --budget-bytes N` on tiny generated
# models: over caps from everything down to the mode's minimum the --wire-dump blobs are valid, add up to the reported
# bytes and never to more than the cap; kvcomm_like sends whole int8 layers (fewer as the cap shrinks, the unsent ones
# counted) and is refused with kv_direct; qkvcomm_like sends every layer, int4 at its minimum and int8 when the cap
# holds it, in c2c and kv_direct; one byte below the minimum is refused naming it; the bytes are the same with
# KW_CPU_ISA=scalar and avx2 and with 1 and 2 threads.
# Arguments: kvwire binary, source dir, build dir.
# shellcheck source=../cli_lib.sh
. "$(dirname "$0")/../cli_lib.sh" "$@"

tiny_c2c_models
item='{"question": "Which planet is known as the red planet?", "choices": ["Venus", "Mars", "Jupiter", "Saturn"]}'
c2c_args=(--sharer shar --fuser fuser)
run() { "$kvwire" c2c --receiver recv "${c2c_args[@]}" --threads 2 --mc-json "$item" --max-new-tokens 2 "$@"; }
# the sections the dumped blobs PREFIX.*.kvw carry, over the blobs
sections() { cat "$1".*.kvw >/dev/null && for f in "$1".*.kvw; do "$kvwire" inspect "$f"; done \
    | awk '$1 ~ /^[0-9]+$/ && $2 ~ /^[0-9]+$/ && NF >= 9' | wc -l; }

# sweep MODE NAME: everything, half way, the minimum; one byte below it refused. Prints "FULL MIN" (the bytes
# used when everything fits, and the minimum).
sweep() {
    local mode=$1 name=$2 full min cap used
    run --budget-mode "$mode" --budget-bytes 1000000 --wire-dump "${name}g" >"${name}g.txt"
    full=$(budget_word "${name}g.txt" used) min=$(budget_word "${name}g.txt" min)
    [ "$(field budget_mode "${name}g.txt")" = "$mode" ] || fail "$name: budget_mode line" >&2
    for cap in "$full" $(((full + min) / 2)) "$min"; do
        run --budget-mode "$mode" --budget-bytes "$cap" --wire-dump "$name$cap" >"$name$cap.txt"
        used=$(budget_word "$name$cap.txt" used)
        [ "$(dumped "$name$cap")" = "$used" ] || fail "$name cap $cap: the dumped blobs are not the $used bytes" >&2
        [ "$used" -le "$cap" ] || fail "$name cap $cap: $used bytes used" >&2
        budget_kept "$name$cap.txt" >/dev/null
    done
    set +e
    run --budget-mode "$mode" --budget-bytes $((min - 1)) >/dev/null 2>err.txt
    [ $? -eq 1 ] || fail "$name: a cap below the minimum was accepted" >&2
    grep -q "need at least $min bytes" err.txt || fail "$name: no minimum in the refusal: $(cat err.txt)" >&2
    set -e
    echo "$full $min"
}

# kvcomm_like: all layers when everything fits, one at the minimum, the rest unsent
out=$(sweep kvcomm_like k)
read -r full min <<<"$out"
all=$(sections "kg")
[ "$all" -ge 2 ] || fail "kvcomm_like: $all layers with everything affordable"
[ "$(sections "k$min")" = 1 ] || fail "kvcomm_like: not one layer at the minimum"
[ "$(field budget_layers "k$min.txt")" = "unsent $((all - 1))" ] || fail "kvcomm_like: $(field budget_layers "k$min.txt")"
grep -Eq '^budget_tokens: candidates ([0-9]+) dropped 0 int8 \1$' "k$min.txt" || fail "kvcomm_like: not all int8"

# qkvcomm_like: every layer; int8 everywhere when it fits, int4 everywhere at the minimum
for xfer in c2c kv_direct; do
    [ $xfer = kv_direct ] && c2c_args=(--mode kv_direct)
    out=$(sweep qkvcomm_like "q$xfer")
    read -r full min <<<"$out"
    [ "$(sections "q${xfer}g")" = "$(sections "q$xfer$min")" ] || fail "qkvcomm_like $xfer: layers left out"
    grep -Eq '^budget_tokens: candidates ([0-9]+) dropped 0 int4 0 int8 \1$' "q${xfer}g.txt" \
        || fail "qkvcomm_like $xfer: not all int8 with everything affordable"
    grep -Eq '^budget_tokens: candidates ([0-9]+) dropped 0 int4 \1 int8 0$' "q$xfer$min.txt" \
        || fail "qkvcomm_like $xfer: not all int4 at the minimum"
done
set +e
run --budget-mode kvcomm_like --budget-bytes 100000 >/dev/null 2>&1
[ $? -eq 2 ] || fail "kvcomm_like with kv_direct accepted"
run --budget-mode qkvcomm_like >/dev/null 2>&1
[ $? -eq 2 ] || fail "--budget-mode without a cap accepted"
set -e

# the same bytes on every ISA and thread count
c2c_args=(--sharer shar --fuser fuser)
for run_as in scalar:1 avx2:2 avx2:1; do
    isa=${run_as%:*} t=${run_as#*:}
    KW_CPU_ISA=$isa "$kvwire" c2c --receiver recv --sharer shar --fuser fuser --threads $t --mc-json "$item" \
        --max-new-tokens 2 --budget-mode qkvcomm_like --budget-bytes 14000 --wire-zstd 3 --wire-dump "i$isa$t" \
        >"i$isa$t.txt"
    cmp "i$isa$t.0.kvw" iscalar1.0.kvw || fail "KW_CPU_ISA=$isa --threads $t gave other blob bytes"
done
echo "ok"
