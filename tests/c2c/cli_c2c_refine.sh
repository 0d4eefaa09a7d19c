#!/usr/bin/env bash
# cli_c2c_refine.sh: `kvwire c2c --refine-threshold X --refine-proportion P` (two-round refinement, docs/PROTOCOL.md
# §5.1) on tiny generated models, c2c and kv_direct: a threshold any margin is below runs round two, whose answer and
# tokens sent are those of one round at P, with both rounds' blobs in --wire-dump adding up to wire_bytes and round
# two's bytes reported apart; a threshold of 0 runs round one only (its answer and bytes); entropy above 0 always asks;
# misuse is refused.
# Arguments: kvwire binary, source dir, build dir.
# shellcheck source=../cli_lib.sh
. "$(dirname "$0")/../cli_lib.sh" "$@"

tiny_c2c_models
item='{"question": "Which planet is known as the red planet?", "choices": ["Venus", "Mars", "Jupiter", "Saturn"]}'
for mode in c2c kv_direct; do
    if [ "$mode" = c2c ]; then
        run() { "$kvwire" c2c --receiver recv --sharer shar --fuser fuser --mc-json "$item" --max-new-tokens 4 \
            --select vnorm_topk --seed 3 --wire int8 "$@"; }
    else
        run() { "$kvwire" c2c --receiver recv --mode kv_direct --mc-json "$item" --max-new-tokens 4 \
            --select random --seed 3 --wire int8 "$@"; }
    fi
    run --select-proportion 0.1 >one.txt
    run --select-proportion 0.7 >all.txt
    run --select-proportion 0.1 --refine-threshold 1000000 --refine-proportion 0.7 --wire-dump d >two.txt
    grep -q "triggered 1 applied 1$" <(field refine two.txt) || fail "$mode: round two not applied: $(field refine two.txt)"
    [ "$(field generated_ids two.txt)" = "$(field generated_ids all.txt)" ] || fail "$mode: refined != one round at 0.7"
    [ "$(field tokens_sent two.txt)" = "$(field tokens_sent all.txt)" ] || fail "$mode: tokens sent differ"
    [ "$(ls d.*.kvw | wc -l)" = 2 ] || fail "$mode: $(ls d.*.kvw | wc -l) blobs dumped, 2 expected"
    [ "$(dumped d)" = "$(field wire_bytes two.txt)" ] || fail "$mode: the dumped blobs are not wire_bytes"
    read -r -a r2 <<<"$(field refine_round_two two.txt)"
    [ $(($(field wire_bytes one.txt) + r2[1])) = "$(field wire_bytes two.txt)" ] || fail "$mode: round bytes ${r2[*]}"
    rm -f d.*.kvw
    run --select-proportion 0.1 --refine-threshold 0 --refine-proportion 0.7 >zero.txt
    grep -q "triggered 0 applied 0$" <(field refine zero.txt) || fail "$mode: threshold 0 triggered"
    [ "$(field generated_ids zero.txt)" = "$(field generated_ids one.txt)" ] || fail "$mode: threshold 0 != round one"
    [ "$(field wire_bytes zero.txt)" = "$(field wire_bytes one.txt)" ] || fail "$mode: threshold 0 sent more"
    run --select-proportion 0.1 --refine-threshold 0 --refine-proportion 0.7 --refine-metric entropy >ent.txt
    grep -q "^refine: metric entropy .* applied 1$" ent.txt || fail "$mode: entropy above 0 did not ask"
done

# misuse
set +e
run --refine-threshold 1 >/dev/null 2>&1; [ $? -eq 2 ] || fail "--refine-threshold without a proportion accepted"
run --refine-metric entropy >/dev/null 2>&1; [ $? -eq 2 ] || fail "--refine-metric alone accepted"
run --select-proportion 0.5 --refine-threshold 1 --refine-proportion 0.5 >/dev/null 2>&1
[ $? -eq 2 ] || fail "a refine proportion not above the selection's accepted"
"$kvwire" c2c --receiver recv --mode kv_direct --prompt "Hi" --refine-threshold 1 --refine-proportion 1 \
    >/dev/null 2>&1
[ $? -eq 2 ] || fail "refinement of a full selection accepted"
"$kvwire" c2c --receiver recv --mode receiver_only --prompt "Hi" --refine-threshold 1 --refine-proportion 1 \
    >/dev/null 2>&1
[ $? -eq 2 ] || fail "receiver_only with refinement accepted"
set -e
echo "ok"
