#!/usr/bin/env bash
# cli_c2c_budget.sh: `kvwire c2c --budget-bytes N` end to end on tiny generated models: a sweep of caps from
# generous down to a few hundred bytes where the --wire-dump blobs add up to the reported bytes and never to more than
# the cap (kvwire inspect accepts each), the allocation histogram accounts for every candidate, the smallest cap the
# request names is accepted and one byte less is refused with that number, two sharers share one cap, the allocation
# is the same bytes with KW_CPU_ISA=scalar and avx2 and with 1 and 2 threads, and misuse is refused.
# Arguments: kvwire binary, source dir, build dir.
# shellcheck source=../cli_lib.sh
. "$(dirname "$0")/../cli_lib.sh" "$@"

tiny_c2c_models
item='{"question": "Which planet is known as the red planet?", "choices": ["Venus", "Mars", "Jupiter", "Saturn"]}'
run() { "$kvwire" c2c --receiver recv --sharer shar --fuser fuser --threads 2 --mc-json "$item" --max-new-tokens 2 "$@"; }

# the sum of the dumped blobs PREFIX.*.kvw, each checked by kvwire inspect
dumped() {
    local total=0 f
    for f in "$1".*.kvw; do
        "$kvwire" inspect "$f" >/dev/null || fail "inspect rejected $f"
        total=$((total + $(stat -c %s "$f")))
    done
    echo "$total"
}

# "budget: cap C used U slack S min M" -> the word after $2
budget_word() { field budget "$1" | tr ' ' '\n' | grep -A1 -x "$2" | tail -1; }

min=""
for cap in 1000000 12000 2000 400 300; do
    run --select vnorm_topk --budget-bytes "$cap" --wire-dump "d$cap" >"c$cap.txt"
    used=$(budget_word "c$cap.txt" used)
    [ "$(dumped "d$cap")" = "$used" ] || fail "cap $cap: the dumped blobs are not the $used bytes reported"
    [ "$(field wire_bytes "c$cap.txt")" = "$used" ] || fail "cap $cap: wire_bytes"
    [ "$used" -le "$cap" ] || fail "cap $cap: $used bytes used"
    [ "$(budget_word "c$cap.txt" slack)" = $((cap - used)) ] || fail "cap $cap: slack"
    # the histogram: candidates = dropped + every codec's count
    read -r -a h <<<"$(field budget_tokens "c$cap.txt")"
    [ "${h[0]}" = candidates ] && [ "${h[2]}" = dropped ] || fail "budget_tokens line: ${h[*]}"
    kept=0
    for ((i = 5; i < ${#h[@]}; i += 2)); do kept=$((kept + h[i])); done
    [ $((kept + h[3])) = "${h[1]}" ] || fail "cap $cap: histogram ${h[*]} does not add up"
    min=$(budget_word "c$cap.txt" min)
done
# generous: nothing dropped, all lossless bf16 (a bf16 cache); tight: most dropped
grep -Eq '^budget_tokens: candidates ([0-9]+) dropped 0 int4 0 int6 0 int8 0 bf16 \1$' c1000000.txt \
    || fail "a generous cap: $(field budget_tokens c1000000.txt)"
[ "$(field answer c1000000.txt)" = "$(field answer <(run --wire bf16))" ] || fail "bf16 for all != --wire bf16"
read -r -a h <<<"$(field budget_tokens c400.txt)"
[ "${h[3]}" -gt $((h[1] / 2)) ] || fail "cap 400 kept too much: ${h[*]}"

# the minimum: accepted at it, refused one byte below with the number in the reason
[ "$min" -gt 100 ] && [ "$min" -lt 400 ] || fail "min $min"
run --budget-bytes "$min" --wire-dump m >cm.txt
[ "$(dumped m)" -le "$min" ] || fail "the minimum cap was exceeded"
set +e
run --budget-bytes $((min - 1)) >/dev/null 2>err.txt
[ $? -eq 1 ] || fail "a cap below the minimum was accepted"
grep -q "need at least $min bytes" err.txt || fail "no minimum in the refusal: $(cat err.txt)"
set -e

# two sharers share the cap
"$kvwire" c2c --receiver recv --sharer shar --fuser fuser --sharer shar --fuser fuser --threads 2 --mc-json "$item" \
    --max-new-tokens 2 --budget-bytes 3001 --wire-dump two >two.txt
[ "$(field wire_blobs two.txt)" = 2 ] || fail "two sharers: blobs"
[ "$(dumped two)" -le 3001 ] || fail "two sharers exceeded the cap"

# the same allocation on every ISA and thread count (zstd included)
for run_as in scalar:1 avx2:2 avx2:1; do
    isa=${run_as%:*} t=${run_as#*:}
    {
        KW_CPU_ISA=$isa "$kvwire" c2c --receiver recv --sharer shar --fuser fuser --threads $t --mc-json "$item" \
            --max-new-tokens 2 --select knorm_topk --budget-bytes 2500 --budget-codecs int4,int8 --wire-gran group16 \
            --wire-zstd 3 --wire-dump "i$isa$t" >"i$isa$t.txt"
        cmp "i$isa$t.0.kvw" iscalar1.0.kvw || fail "KW_CPU_ISA=$isa --threads $t gave other blob bytes"
        diff <(grep -E '^(budget|answer)' "i$isa$t.txt") <(grep -E '^(budget|answer)' iscalar1.txt) \
            || fail "KW_CPU_ISA=$isa --threads $t: another record"
    }
done

# misuse
set +e
run --budget-bytes 5000 --wire int8 >/dev/null 2>&1; [ $? -eq 2 ] || fail "--budget-bytes with --wire accepted"
run --budget-codecs int8 >/dev/null 2>&1; [ $? -eq 2 ] || fail "--budget-codecs without a cap accepted"
"$kvwire" c2c --receiver recv --mode kv_direct --prompt "Hi" --budget-bytes 5000 >/dev/null 2>&1
[ $? -eq 2 ] || fail "kv_direct with a cap accepted"
run --budget-bytes 5000 --wire-gran head >/dev/null 2>err.txt; [ $? -eq 1 ] || fail "head scales accepted"
grep -q "token or group scales" err.txt || fail "no reason for head scales: $(cat err.txt)"
run --budget-bytes 5000 --budget-codecs int4,int9 >/dev/null 2>err.txt; [ $? -eq 1 ] || fail "int9 accepted"
grep -q "int9" err.txt || fail "no reason for int9"
set -e
echo "ok"
