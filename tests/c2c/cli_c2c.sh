#!/usr/bin/env bash
# cli_c2c.sh: `kvwire c2c` end to end on models made by `kvwire gen-model` (real Qwen tokenizer) and a fuser made by
# `kvwire gen-fuser`: the printed record (answer, letter, sections, fused tokens, layer counts, sharer KV bytes by
# the formula), no token alignment for one tokenizer, without a sharer tokenizer or with --align off, determinism,
# cache proportion with back order, the KVWire round trip (a bf16 passthrough blob gives the same answer as no wire,
# int8 is smaller than the KV it carries, --wire-dump blobs are the measured ones and valid), fp32 mode, and clean
# refusals.
# Arguments: kvwire binary, source dir, build dir.
# shellcheck source=../cli_lib.sh
. "$(dirname "$0")/../cli_lib.sh" "$@"

tiny_c2c_models
grep -q "gates: 0:open 1:closed 2:open" gates.txt || fail "unexpected gates: $(cat gates.txt)"
item='{"question": "Which planet is known as the red planet?", "choices": ["Venus", "Mars", "Jupiter", "Saturn"]}'
run() { "$kvwire" c2c --receiver recv --sharer shar --fuser fuser --threads 2 "$@"; }

run --mc-json "$item" --max-new-tokens 8 >a.txt
n=$(field prompt_tokens a.txt)
[ "$n" -gt 60 ] || fail "prompt_tokens $n: the MC prompt is longer"
[ "$(field sections a.txt)" = "$((n - 1)):fused 1:receiver" ] || fail "sections: $(field sections a.txt)"
[ "$(field tokens_fused a.txt)" = "$((n - 1))" ] || fail "tokens_fused"
[ "$(field layers_fused a.txt)" = 2 ] || fail "layers_fused"
[ "$(field layers_skipped a.txt)" = 1 ] || fail "layers_skipped"
# last_aligned 3 <- 2: receiver layers 0, 1, 2 take sharer layers 0, 0, 1; layer 1 is closed, so sharer layers 0 and 1
# travel: 2 layers x K and V x (n - 1) tokens x kv heads x head_dim x 2 bytes (bf16 cache)
hs=$(grep -o '"num_key_value_heads": [0-9]*' shar/config.json | grep -o '[0-9]*$')
hd=$(grep -o '"head_dim": [0-9]*' shar/config.json | grep -o '[0-9]*$' || true)
if [ -z "$hd" ]; then
    hidden=$(grep -o '"hidden_size": [0-9]*' shar/config.json | grep -o '[0-9]*$')
    heads=$(grep -o '"num_attention_heads": [0-9]*' shar/config.json | grep -o '[0-9]*$')
    hd=$((hidden / heads))
fi
[ "$(field sharer_kv_bytes a.txt)" = "$((2 * 2 * (n - 1) * hs * hd * 2)) (bf16)" ] || fail "sharer_kv_bytes"
grep -Eq '^letter: ([ABCD]|null)$' a.txt || fail "letter line"
# one tokenizer for both: no token alignment, and the fuser's config.json does not ask for it
[ "$(field alignment a.txt)" = "off (the tokenizers give the same ids)" ] || fail "alignment: $(field alignment a.txt)"
grep -q '^answer: ' a.txt || fail "answer line"
g=$(field generated_tokens a.txt | cut -d' ' -f1)
[ "$g" -ge 1 ] && [ "$g" -le 8 ] || fail "generated_tokens $g"
[ "$(field generated_ids a.txt | tr ',' '\n' | wc -l)" = "$g" ] || fail "generated_ids: $(field generated_ids a.txt)"
grep -Eq '^timing_ms: receiver_prefill [0-9.]+ sharer_prefill [0-9.]+ transfer [0-9.]+ projection [0-9.]+ last_prompt [0-9.]+ decode [0-9.]+' a.txt \
    || fail "timing line"
# a sharer folder without a tokenizer takes the receiver's ids, as does --align off
cp -r shar shar_notok
rm shar_notok/tokenizer.json
"$kvwire" c2c --receiver recv --sharer shar_notok --fuser fuser --threads 2 --mc-json "$item" --max-new-tokens 8 >nt.txt
diff <(grep -E '^(answer|generated_ids):' a.txt) <(grep -E '^(answer|generated_ids):' nt.txt) || fail "no tokenizer"
[ "$(field alignment nt.txt)" = "off (no sharer tokenizer: it takes the receiver's ids)" ] || fail "no tokenizer line"
run --mc-json "$item" --max-new-tokens 8 --align off >off.txt
diff <(grep -E '^(answer|generated_ids):' a.txt) <(grep -E '^(answer|generated_ids):' off.txt) || fail "--align off"
[ "$(field alignment off.txt)" = "off (--align off)" ] || fail "--align off line"

# deterministic (timings aside), also with another thread count
run --mc-json "$item" --max-new-tokens 8 --threads 1 >b.txt
diff <(grep -v '^timing_ms' a.txt) <(grep -v '^timing_ms' b.txt) || fail "two runs differ"

# the KVWire round trip: bf16 passthrough is lossless on a bf16 cache; int8 is smaller than the KV
run --mc-json "$item" --max-new-tokens 8 --wire bf16 >w16.txt
diff <(grep -E '^(answer|letter|generated_tokens):' a.txt) <(grep -E '^(answer|letter|generated_tokens):' w16.txt) \
    || fail "a bf16 wire changed the answer"
[ "$(field wire_blobs w16.txt)" = 1 ] || fail "wire_blobs"
run --mc-json "$item" --max-new-tokens 8 --wire int8 --wire-gran group8 --wire-zstd 3 >w8.txt
wb=$(field wire_bytes w8.txt)
kb=$(field sharer_kv_bytes w8.txt | cut -d' ' -f1)
[ "$wb" -gt 0 ] && [ "$wb" -lt "$kb" ] || fail "int8 blob $wb bytes vs $kb bytes of KV"
# --wire-dump writes the very blobs that were measured: their sizes add up to wire_bytes and inspect verifies them
run --mc-json "$item" --max-new-tokens 8 --wire int4 --wire-gran head --wire-dump dump >w4.txt
[ -f dump.0.kvw ] && [ ! -e dump.1.kvw ] || fail "--wire-dump: expected exactly dump.0.kvw"
[ "$(stat -c %s dump.0.kvw)" = "$(field wire_bytes w4.txt)" ] || fail "dumped blob size != wire_bytes"
"$kvwire" inspect dump.0.kvw >inspect.txt || fail "inspect rejected the dumped blob: $(cat inspect.txt)"
grep -q "int4/head" inspect.txt || fail "inspect does not show the int4/head codec"
run --prompt "Hi" --wire-dump nowire >/dev/null 2>&1 && fail "--wire-dump without --wire accepted"

# cache proportion, back order: [unfused][fused][last]
run --prompt "Tell me a story about a dragon and a knight." --proportion 0.5 --order back --max-new-tokens 4 >p.txt
n=$(field prompt_tokens p.txt)
pos=$(((n - 1) / 2))
[ "$(field sections p.txt)" = "$((n - 1 - pos)):receiver $pos:fused 1:receiver" ] || fail "back sections"
[ "$(field tokens_fused p.txt)" = "$pos" ] || fail "back tokens_fused"
run --prompt "Hi" --proportion 0 --max-new-tokens 2 >z.txt
[ "$(field tokens_fused z.txt)" = 0 ] || fail "proportion 0 fused something"
run --prompt "Hi" --fp32 --max-new-tokens 2 --fusion parallel >f.txt
grep -q '^sharer_kv_bytes: .* (f32)$' f.txt || fail "fp32 mode"

# refusals
set +e
run --prompt "Hi" --mc-json "$item" >/dev/null 2>&1; [ $? -eq 2 ] || fail "both prompts accepted"
"$kvwire" c2c --receiver recv --sharer shar --prompt "Hi" >/dev/null 2>&1; [ $? -eq 2 ] || fail "no fuser accepted"
run --prompt "Hi" --proportion 1.5 >/dev/null 2>&1; [ $? -eq 2 ] || fail "proportion 1.5 accepted"
run --prompt "Hi" --wire int9 >/dev/null 2>err.txt; [ $? -eq 1 ] || fail "codec int9 accepted"
grep -q "int9" err.txt || fail "no reason for int9"
run --mc-json '{"question": 3}' >/dev/null 2>err.txt; [ $? -eq 1 ] || fail "bad item accepted"
# the fuser maps 3 receiver layers; a 2-layer receiver cannot take it (a deeper one could: extra layers stay unfused)
"$kvwire" gen-model --arch qwen3 --preset tiny --layers 2 --seed 4 --tokenizer "$src/models/tokenizers/qwen3" \
    --out recv2 >/dev/null
"$kvwire" c2c --receiver recv2 --sharer shar --fuser fuser --prompt "Hi" >/dev/null 2>err.txt
[ $? -eq 1 ] || fail "a fuser for another receiver accepted"
grep -q "bind fusers" err.txt || fail "no reason for the fuser mismatch: $(cat err.txt)"
set -e
echo "ok"
