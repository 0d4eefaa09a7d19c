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

min=""
for cap in 1000000 12000 2000 400 300; do
    run --select vnorm_topk --budget-bytes "$cap" --wire-dump "d$cap" >"c$cap.txt"
    used=$(budget_word "c$cap.txt" used)
    [ "$(dumped "d$cap")" = "$used" ] || fail "cap $cap: the dumped blobs are not the $used bytes reported"
    [ "$(field wire_bytes "c$cap.txt")" = "$used" ] || fail "cap $cap: wire_bytes"
    [ "$used" -le "$cap" ] || fail "cap $cap: $used bytes used"
    [ "$(budget_word "c$cap.txt" slack)" = $((cap - used)) ] || fail "cap $cap: slack"
    budget_kept "c$cap.txt" >/dev/null # the histogram: candidates = dropped + every codec's count
    min=$(budget_word "c$cap.txt" min)
done
budget_check_ends c1000000.txt c400.txt
budget_check_minimum "$min" 400

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
"$kvwire" c2c --receiver recv --mode receiver_only --prompt "Hi" --budget-bytes 5000 >/dev/null 2>&1
[ $? -eq 2 ] || fail "receiver_only with a cap accepted"
run --budget-bytes 5000 --wire-gran head >/dev/null 2>err.txt; [ $? -eq 1 ] || fail "head scales accepted"
grep -q "token or group scales" err.txt || fail "no reason for head scales: $(cat err.txt)"
run --budget-bytes 5000 --budget-codecs int4,int9 >/dev/null 2>err.txt; [ $? -eq 1 ] || fail "int9 accepted"
grep -q "int9" err.txt || fail "no reason for int9"
set -e
echo "ok"
