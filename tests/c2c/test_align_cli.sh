#!/usr/bin/env bash
# test_align_cli.sh: `kvwire c2c-align` end to end on the models of tests/data/c2c/align/c2c_llama.json (made again
# with `kvwire gen-model` / `gen-fuser` from the options recorded there): with --fp32 the generated ids equal the C2C
# reference's for the multiple-choice prompt, with the reference's decode-time pads and with --decode-pads masked;
# the printed record (sections, pads, alignment arrays), a same-tokenizer pair (Qwen3 <- Qwen2 with the Qwen2.5
# template), and clean refusals (bad options, content the Llama template trims).
# Arguments: kvwire binary, source dir, build dir.
set -euo pipefail
kvwire=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
fail() { echo "FAIL: $*"; exit 1; }
field() { grep "^$1: " "$2" | head -1 | sed "s/^$1: //"; }
fixture="$src/tests/data/c2c/align/c2c_llama.json"
# gen_ids of the n-th scenario (1-based), as "a,b,c"
want_ids() { grep -o '"gen_ids": \[[^]]*\]' "$fixture" | sed -n "$1p" | sed 's/.*\[//; s/\]//; s/ //g'; }

"$kvwire" gen-model --arch qwen3 --preset tiny --layers 4 --seed 71 --dtype bf16 --tied 0 \
    --tokenizer "$src/models/tokenizers/qwen3" --out recv >/dev/null
"$kvwire" gen-model --arch llama --preset tiny --layers 2 --seed 72 --dtype bf16 \
    --tokenizer "$src/models/tokenizers/llama3" --out llama >/dev/null
"$kvwire" gen-fuser --receiver recv --sharer llama --out fuser --seed 73 --hidden 64 --intermediate 96 >/dev/null
mc=$'Accurately answer the following question:\n\nWhich gas makes up most of the Earth\'s atmosphere?\n\nChoices:\nA. Oxygen\nB. Nitrogen\nC. Carbon dioxide\nD. Argon\n\n\nInstructions:\n- Carefully read the question and all options.\n- Select the single most correct answer.\n- Respond ONLY in the following format: "The correct answer is A/B/C/D".\n- Do not include any explanations, additional text, or punctuation besides the answer.\n\nThe correct answer is'
run() { "$kvwire" c2c-align --receiver recv --sharer llama --fuser fuser --date "23 Nov 2026" --threads 2 "$@"; }

run --prompt "$mc" --fp32 --max-new-tokens 32 --print-alignment >ref.txt
[ "$(field generated_ids ref.txt | tr -d '[]')" = "$(want_ids 1)" ] || fail "ids differ from the reference: $(field generated_ids ref.txt)"
[ "$(field prompt_tokens ref.txt)" = 137 ] || fail "prompt_tokens"
[ "$(field recv_pads ref.txt)" = 27 ] || fail "recv_pads"
[ "$(field sharer_pads ref.txt)" = 4 ] || fail "sharer_pads"
[ "$(field sections ref.txt)" = "30:receiver 98:fused 9:receiver" ] || fail "sections: $(field sections ref.txt)"
[ "$(field tokens_fused ref.txt)" = 98 ] || fail "tokens_fused"
[ "$(field layers_fused ref.txt)" = 3 ] || fail "layers_fused"
[ "$(field layers_skipped ref.txt)" = 1 ] || fail "layers_skipped"
for k in recv_ids sharer_ids message_mask recv_pad sharer_pad; do
    n=$(field $k ref.txt | tr ',' '\n' | wc -l)
    [ "$n" = 137 ] || fail "$k has $n entries"
done
[ "$(field message_mask ref.txt | tr -cd 1 | wc -c)" = 98 ] || fail "message_mask"
[ "$(field recv_pad ref.txt | tr -cd 1 | wc -c)" = 27 ] || fail "recv_pad"
grep -Eq '^letter: ([ABCD]|null)$' ref.txt || fail "letter line"
grep -Eq '^timing_ms: receiver_prefill [0-9.]+ sharer_prefill [0-9.]+ projection [0-9.]+' ref.txt || fail "timing"

run --prompt "$mc" --fp32 --max-new-tokens 32 --decode-pads masked >masked.txt
[ "$(field generated_ids masked.txt | tr -d '[]')" = "$(want_ids 2)" ] || fail "masked ids differ from the reference"

# bf16 (the default), the other strategy, parallel mode: they run and keep the shape of the record
run --prompt "$mc" --max-new-tokens 4 --strategy first --mode parallel >b.txt
[ "$(field prompt_tokens b.txt)" = 137 ] || fail "bf16 prompt_tokens"
[ "$(field sharer_kv_bytes b.txt)" = "$(( $(field sharer_kv_bytes ref.txt | cut -d' ' -f1) / 2 )) (bf16)" ] \
    || fail "bf16 sharer_kv_bytes: $(field sharer_kv_bytes b.txt)"
run --prompt "$mc" --max-new-tokens 4 --strategy first --mode parallel >b2.txt
diff <(grep -v '^timing_ms' b.txt) <(grep -v '^timing_ms' b2.txt) || fail "two runs differ"
run --mc-json '{"question": "2+2?", "choices": ["3", "4", "5", "6"]}' --system "Be brief." --max-new-tokens 2 >s.txt
[ "$(field sections s.txt | wc -w)" = 5 ] || fail "system + user: $(field sections s.txt)"

# one tokenizer, two templates: Qwen3 receiver, Qwen2 sharer rendered with the Qwen2.5 template (default system prompt)
"$kvwire" gen-model --arch qwen2 --preset tiny --layers 2 --seed 74 --tokenizer "$src/models/tokenizers/qwen3" \
    --out qwen2 >/dev/null
"$kvwire" gen-fuser --receiver recv --sharer qwen2 --out fuser2 --seed 75 --hidden 64 --intermediate 96 >/dev/null
"$kvwire" c2c-align --receiver recv --sharer qwen2 --fuser fuser2 --prompt "Hello" --max-new-tokens 2 >q.txt
# the Qwen2.5 header (system prompt) is 21 tokens longer; Qwen3's think block pads the Qwen2.5 tail by 4
[ "$(field recv_pads q.txt)" = 21 ] || fail "recv_pads $(field recv_pads q.txt)"
[ "$(field sharer_pads q.txt)" = 4 ] || fail "sharer_pads $(field sharer_pads q.txt)"
[ "$(field sections q.txt)" = "24:receiver 1:fused 9:receiver" ] || fail "sections: $(field sections q.txt)"

# refusals
set +e
run --prompt x --strategy middle >/dev/null 2>err.txt; [ $? = 2 ] || fail "bad strategy"
run --prompt x --decode-pads never >/dev/null 2>err.txt; [ $? = 2 ] || fail "bad pads"
"$kvwire" c2c-align --receiver recv --prompt x >/dev/null 2>err.txt; [ $? = 2 ] || fail "missing sharer"
run --prompt "  padded  " >/dev/null 2>err.txt; rc=$?
set -e
[ $rc = 1 ] || fail "trimmed content: exit $rc"
grep -q "token alignment failed" err.txt || fail "trimmed content message: $(cat err.txt)"
echo "c2c-align CLI: ok"
