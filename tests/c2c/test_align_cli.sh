#!/usr/bin/env bash
# test_align_cli.sh: `kvwire c2c` with token alignment end to end on the models of tests/data/c2c/align/c2c_llama.json
# (made again with `kvwire gen-model` / `gen-fuser` from the options recorded there): with --fp32 the generated ids
# equal the C2C reference's for the multiple-choice prompt, with the reference's decode-time pads and with
# --decode-pads masked; alignment switched on by the fuser's config.json alone, or by the tokenizers alone (the same
# ids; also with --sharer-tokenizer for a sharer folder without one), and --align off or a missing sharer tokenizer
# refused for a sharer whose vocabulary cannot take the receiver's ids; the printed record
# (sections, aligned sections, pads, alignment arrays), a bf16 KVWire round trip on an aligned run, a same-tokenizer
# pair (Qwen3 <- Qwen2 with the Qwen2.5 template: no alignment unless --align), and clean refusals (bad options,
# several sharers, --raw / --proportion with alignment, content the Llama template trims).
# Arguments: kvwire binary, source dir, build dir.
# shellcheck source=../cli_lib.sh
. "$(dirname "$0")/../cli_lib.sh" "$@"
fixture="$src/tests/data/c2c/align/c2c_llama.json"
# gen_ids of the n-th scenario (1-based), as "a,b,c"
want_ids() { grep -o '"gen_ids": \[[^]]*\]' "$fixture" | sed -n "$1p" | sed 's/.*\[//; s/\]//; s/ //g'; }

"$kvwire" gen-model --arch qwen3 --preset tiny --layers 4 --seed 71 --dtype bf16 --tied 0 \
    --tokenizer "$src/models/tokenizers/qwen3" --out recv >/dev/null
"$kvwire" gen-model --arch llama --preset tiny --layers 2 --seed 72 --dtype bf16 \
    --tokenizer "$src/models/tokenizers/llama3" --out llama >/dev/null
"$kvwire" gen-fuser --receiver recv --sharer llama --out fuser --seed 73 --hidden 64 --intermediate 96 >/dev/null
mc=$'Accurately answer the following question:\n\nWhich gas makes up most of the Earth\'s atmosphere?\n\nChoices:\nA. Oxygen\nB. Nitrogen\nC. Carbon dioxide\nD. Argon\n\n\nInstructions:\n- Carefully read the question and all options.\n- Select the single most correct answer.\n- Respond ONLY in the following format: "The correct answer is A/B/C/D".\n- Do not include any explanations, additional text, or punctuation besides the answer.\n\nThe correct answer is'
run() { "$kvwire" c2c --receiver recv --sharer llama --fuser fuser --date "23 Nov 2026" --threads 2 "$@"; }

run --prompt "$mc" --fp32 --max-new-tokens 32 --print-alignment >ref.txt
[ "$(field generated_ids ref.txt | tr -d '[]')" = "$(want_ids 1)" ] || fail "ids differ from the reference: $(field generated_ids ref.txt)"
[ "$(field prompt_tokens ref.txt)" = 137 ] || fail "prompt_tokens"
[ "$(field recv_pads ref.txt)" = 27 ] || fail "recv_pads"
[ "$(field sharer_pads ref.txt)" = 4 ] || fail "sharer_pads"
[ "$(field sections ref.txt)" = "30:receiver 98:fused 9:receiver" ] || fail "sections: $(field sections ref.txt)"
# the fuser's config.json (gen-fuser: is_do_alignment true, longest for a Llama sharer) turned alignment on
[ "$(field alignment ref.txt)" = "longest (fuser config.json: is_do_alignment, alignment_strategy longest)" ] \
    || fail "alignment: $(field alignment ref.txt)"
[ "$(field align_sections ref.txt)" = "30:template(recv_pads=27,sharer_pads=0) 98:message 9:template(recv_pads=0,sharer_pads=4)" ] \
    || fail "align_sections: $(field align_sections ref.txt)"
[ "$(field decode_pads ref.txt)" = reference ] || fail "decode_pads"
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
grep -Eq '^timing_ms: receiver_prefill [0-9.]+ sharer_prefill [0-9.]+ transfer [0-9.]+ projection [0-9.]+' ref.txt \
    || fail "timing"

run --prompt "$mc" --fp32 --max-new-tokens 32 --decode-pads masked >masked.txt
[ "$(field generated_ids masked.txt | tr -d '[]')" = "$(want_ids 2)" ] || fail "masked ids differ from the reference"
[ "$(field decode_pads masked.txt)" = masked ] || fail "decode_pads masked"

# the tokenizers alone turn alignment on (longest): the same fuser with is_do_alignment false gives the same ids
cp -r fuser fuser_noalign
sed -i 's/"is_do_alignment": true/"is_do_alignment": false/' fuser_noalign/config.json
grep -q '"is_do_alignment": false' fuser_noalign/config.json || fail "could not edit the fuser config"
"$kvwire" c2c --receiver recv --sharer llama --fuser fuser_noalign --date "23 Nov 2026" --threads 2 --prompt "$mc" \
    --fp32 --max-new-tokens 32 >tokdiff.txt
[ "$(field generated_ids tokdiff.txt | tr -d '[]')" = "$(want_ids 1)" ] || fail "tokenizer-detected alignment ids"
[ "$(field alignment tokdiff.txt)" = "longest (the tokenizers differ (fuser config.json: is_do_alignment false))" ] \
    || fail "alignment: $(field alignment tokdiff.txt)"
# a sharer folder without its tokenizer: the ids cannot be told apart, so no alignment (and the Llama vocabulary
# cannot take Qwen ids) unless --sharer-tokenizer names it; a fuser that asks for alignment needs the tokenizer
cp -r llama llama_notok
rm llama_notok/tokenizer.json
nrun() { "$kvwire" c2c --receiver recv --sharer llama_notok --date "23 Nov 2026" --threads 2 --prompt "$mc" "$@"; }
set +e
nrun --fuser fuser_noalign --max-new-tokens 2 >/dev/null 2>err.txt; rc=$?
set -e
[ $rc = 1 ] && grep -q "smaller vocabulary" err.txt || fail "no sharer tokenizer: exit $rc, $(cat err.txt)"
nrun --fuser fuser_noalign --fp32 --max-new-tokens 32 --sharer-tokenizer "$src/models/tokenizers/llama3" >st.txt
[ "$(field generated_ids st.txt | tr -d '[]')" = "$(want_ids 1)" ] || fail "--sharer-tokenizer ids"
[ "$(field alignment st.txt)" = "$(field alignment tokdiff.txt)" ] || fail "--sharer-tokenizer: $(field alignment st.txt)"
set +e
nrun --fuser fuser --max-new-tokens 2 >/dev/null 2>err.txt; rc=$?
set -e
[ $rc = 1 ] && grep -q "no tokenizer.json" err.txt || fail "fuser alignment without a tokenizer: exit $rc, $(cat err.txt)"
# --align first overrides the fuser's longest (and runs); --align off cannot feed Qwen ids to the Llama vocabulary
run --prompt "$mc" --max-new-tokens 2 --align first >first.txt
[ "$(field alignment first.txt)" = "first (--align)" ] || fail "alignment: $(field alignment first.txt)"
set +e
run --prompt "$mc" --max-new-tokens 2 --align off >/dev/null 2>err.txt; rc=$?
set -e
[ $rc = 1 ] || fail "--align off with a Llama sharer: exit $rc"
grep -q "smaller vocabulary" err.txt || fail "--align off message: $(cat err.txt)"

# a bf16 KVWire round trip is lossless on the bf16 cache of an aligned run: one blob for the one fused section
run --prompt "$mc" --max-new-tokens 8 >a16.txt
run --prompt "$mc" --max-new-tokens 8 --wire bf16 >w16.txt
diff <(grep -E '^(answer|generated_ids):' a16.txt) <(grep -E '^(answer|generated_ids):' w16.txt) \
    || fail "a bf16 wire changed an aligned run"
[ "$(field wire_blobs w16.txt)" = 1 ] || fail "wire_blobs $(field wire_blobs w16.txt)"

# bf16 (the default), the other strategy, parallel mode: they run and keep the shape of the record
run --prompt "$mc" --max-new-tokens 4 --align first --fusion parallel >b.txt
[ "$(field prompt_tokens b.txt)" = 137 ] || fail "bf16 prompt_tokens"
[ "$(field sharer_kv_bytes b.txt)" = "$(( $(field sharer_kv_bytes ref.txt | cut -d' ' -f1) / 2 )) (bf16)" ] \
    || fail "bf16 sharer_kv_bytes: $(field sharer_kv_bytes b.txt)"
run --prompt "$mc" --max-new-tokens 4 --align first --fusion parallel >b2.txt
diff <(grep -v '^timing_ms' b.txt) <(grep -v '^timing_ms' b2.txt) || fail "two runs differ"
run --mc-json '{"question": "2+2?", "choices": ["3", "4", "5", "6"]}' --system "Be brief." --max-new-tokens 2 >s.txt
[ "$(field sections s.txt | wc -w)" = 5 ] || fail "system + user: $(field sections s.txt)"

# one tokenizer, two templates: Qwen3 receiver, Qwen2 sharer rendered with the Qwen2.5 template (default system prompt)
"$kvwire" gen-model --arch qwen2 --preset tiny --layers 2 --seed 74 --tokenizer "$src/models/tokenizers/qwen3" \
    --out qwen2 >/dev/null
"$kvwire" gen-fuser --receiver recv --sharer qwen2 --out fuser2 --seed 75 --hidden 64 --intermediate 96 >/dev/null
"$kvwire" c2c --receiver recv --sharer qwen2 --fuser fuser2 --prompt "Hello" --max-new-tokens 2 >q0.txt
[ "$(field alignment q0.txt)" = "off (the tokenizers give the same ids)" ] || fail "alignment: $(field alignment q0.txt)"
grep -q '^recv_pads:' q0.txt && fail "pads printed without alignment"
"$kvwire" c2c --receiver recv --sharer qwen2 --fuser fuser2 --prompt "Hello" --max-new-tokens 2 --align longest >q.txt
# the Qwen2.5 header (system prompt) is 21 tokens longer; Qwen3's think block pads the Qwen2.5 tail by 4
[ "$(field recv_pads q.txt)" = 21 ] || fail "recv_pads $(field recv_pads q.txt)"
[ "$(field sharer_pads q.txt)" = 4 ] || fail "sharer_pads $(field sharer_pads q.txt)"
[ "$(field sections q.txt)" = "24:receiver 1:fused 9:receiver" ] || fail "sections: $(field sections q.txt)"

# refusals
set +e
run --prompt x --align middle >/dev/null 2>err.txt; [ $? = 2 ] || fail "bad strategy"
run --prompt x --decode-pads never >/dev/null 2>err.txt; [ $? = 2 ] || fail "bad pads"
"$kvwire" c2c --receiver recv --prompt x >/dev/null 2>err.txt; [ $? = 2 ] || fail "missing sharer"
run --prompt x --align longest --raw >/dev/null 2>err.txt; [ $? = 2 ] || fail "--raw with --align"
run --prompt x --align longest --proportion 0.5 >/dev/null 2>err.txt; [ $? = 2 ] || fail "--proportion with --align"
run --prompt x --raw >/dev/null 2>err.txt; [ $? = 1 ] || fail "--raw with the fuser's alignment"
grep -q "raw" err.txt || fail "--raw message: $(cat err.txt)"
run --prompt x --sharer qwen2 --fuser fuser2 >/dev/null 2>err.txt; [ $? = 1 ] || fail "two sharers, one aligned"
grep -q "takes one sharer" err.txt || fail "two sharers message: $(cat err.txt)"
run --prompt "  padded  " >/dev/null 2>err.txt; rc=$?
set -e
[ $rc = 1 ] || fail "trimmed content: exit $rc"
grep -q "token alignment failed" err.txt || fail "trimmed content message: $(cat err.txt)"
echo "c2c alignment CLI: ok"
