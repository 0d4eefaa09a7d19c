#!/usr/bin/env bash
# cli_c2c_modes.sh: `kvwire c2c` modes and selection on gen-model tiny models and a gen-fuser fuser.
#   kv_direct (the receiver's own model prefills the shared part) gives the receiver_only tokens, with and without a
#   bf16 KVWire blob and with half of the prompt shared; a norm selection sends the expected share of rows and hides
#   the rest; c2c with vnorm_topk sends round(P * T) rows per layer and fewer wire bytes; the seeded random selection
#   is deterministic; text_relay writes a capped message; refusals.
# Arguments: kvwire binary, source dir, build dir.
# shellcheck source=../cli_lib.sh
. "$(dirname "$0")/../cli_lib.sh" "$@"
same() { diff <(grep -E '^(answer|generated_ids):' "$1") <(grep -E '^(answer|generated_ids):' "$2") >/dev/null; }

tok=$src/models/tokenizers/qwen3
"$kvwire" gen-model --arch qwen3 --preset tiny --layers 3 --seed 1 --tied 0 --tokenizer "$tok" --out recv >/dev/null
"$kvwire" gen-model --arch qwen2 --preset tiny --layers 2 --seed 2 --tied 0 --tokenizer "$tok" --out shar >/dev/null
"$kvwire" gen-fuser --receiver recv --sharer shar --out fuser --seed 3 --hidden 64 --intermediate 96 >/dev/null
p="Name three colours of the rainbow and say which one is in the middle."

"$kvwire" c2c --receiver recv --prompt "$p" --mode receiver_only --max-new-tokens 12 --threads 2 >ro.txt
[ "$(field mode ro.txt)" = receiver_only ] || fail "mode line"
for extra in "" "--wire bf16" "--proportion 0.5" "--proportion 0.5 --order back --wire bf16"; do
    # shellcheck disable=SC2086
    "$kvwire" c2c --receiver recv --prompt "$p" --mode kv_direct --max-new-tokens 12 --threads 2 $extra >kd.txt
    same ro.txt kd.txt || fail "kv_direct $extra: tokens differ from receiver_only"
done
n=$(field prompt_tokens ro.txt)
"$kvwire" c2c --receiver recv --prompt "$p" --mode kv_direct --select knorm_topk --select-proportion 0.5 \
    --max-new-tokens 4 >kh.txt
m=$((n - 1)) # round(m * 0.5), half to even
if [ $((m % 2)) -eq 0 ]; then half=$((m / 2)); elif [ $(((m / 2) % 2)) -eq 0 ]; then half=$((m / 2)); else half=$((m / 2 + 1)); fi
[ "$(field tokens_sent kh.txt)" = "$((3 * half)) of $((3 * m)) (over the sent layers)" ] \
    || fail "kv_direct knorm tokens_sent: $(field tokens_sent kh.txt)"

# c2c with a selection: round(0.25 T) rows in each sent layer, fewer bytes than everything
"$kvwire" c2c --receiver recv --sharer shar --fuser fuser --prompt "$p" --max-new-tokens 4 --wire int8 >full.txt
"$kvwire" c2c --receiver recv --sharer shar --fuser fuser --prompt "$p" --max-new-tokens 4 --wire int8 \
    --select vnorm_topk --select-proportion 0.25 >sel.txt
sent=$(field tokens_sent sel.txt | cut -d' ' -f1)
total=$(field tokens_sent sel.txt | cut -d' ' -f3)
[ "$sent" -lt "$total" ] && [ "$sent" -gt 0 ] || fail "vnorm tokens_sent $sent of $total"
[ "$(field wire_bytes sel.txt)" -lt "$(field wire_bytes full.txt)" ] || fail "a quarter of the rows is not smaller"
# the seeded random selection is the same run after run
for s in 1 1; do
    "$kvwire" c2c --receiver recv --sharer shar --fuser fuser --prompt "$p" --max-new-tokens 4 --select random \
        --select-proportion 0.5 --seed "$s" --wire int4 >"r$s.txt"
done
"$kvwire" c2c --receiver recv --sharer shar --fuser fuser --prompt "$p" --max-new-tokens 4 --select random \
    --select-proportion 0.5 --seed 1 --wire int4 >r1b.txt
diff <(grep -v '^timing_ms' r1.txt) <(grep -v '^timing_ms' r1b.txt) || fail "random selection not deterministic"

# text relay: the sharer's message, capped at a character boundary
"$kvwire" c2c --receiver recv --sharer shar --prompt "$p" --mode text_relay --relay-max-tokens 16 --relay-bytes 20 \
    --max-new-tokens 4 >tr.txt
rb=$(field relay_bytes tr.txt | cut -d' ' -f1)
[ "$rb" -le 20 ] || fail "relay_bytes $rb over the cap"
grep -q '^relay_text: ' tr.txt || fail "relay_text line"
[ "$(field relay_tokens tr.txt)" -ge 1 ] || fail "relay_tokens"

# refusals (exit 2)
set +e
"$kvwire" c2c --receiver recv --sharer shar --fuser fuser --prompt x --mode receiver_only >/dev/null 2>&1
[ $? -eq 2 ] || fail "receiver_only with a sharer accepted"
"$kvwire" c2c --receiver recv --prompt x --mode text_relay >/dev/null 2>&1
[ $? -eq 2 ] || fail "text_relay without a sharer accepted"
"$kvwire" c2c --receiver recv --prompt x --mode kv_direct --select vnorm --select-proportion 0.5 >/dev/null 2>&1
[ $? -eq 2 ] || fail "an unknown selection accepted"
"$kvwire" c2c --receiver recv --prompt x --mode receiver_only --wire int8 >/dev/null 2>&1
[ $? -eq 2 ] || fail "--wire with receiver_only accepted"
set -e
echo ok
