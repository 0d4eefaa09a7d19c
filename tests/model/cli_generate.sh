#!/usr/bin/env bash
# cli_generate.sh: the demo path end to end. `kvwire gen-model` writes tiny random models with the real tokenizers,
# `kvwire generate --chat` renders the family's template, tokenizes it (ids checked against HF tokenizers for the
# Qwen3 and Gemma 3 demo prompts), prefills, decodes greedily (Gemma 3's tokens checked against HF's generate) and
# prints the completion, the ids and the timings. Generation is
# deterministic (two runs print the same), --max-new-tokens is obeyed, and bad invocations fail cleanly.
# Arguments: kvwire binary, source dir, build dir.
set -euo pipefail
kvwire=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$kvwire" gen-model --arch qwen3 --preset tiny --seed 1 --tokenizer "$src/models/tokenizers/qwen3" \
    --out "$tmp/tiny-qwen3" >/dev/null
"$kvwire" generate --model "$tmp/tiny-qwen3" --prompt "What is the capital of France?" --chat \
    --max-new-tokens 16 --threads 2 >"$tmp/out" 2>"$tmp/err"
# transformers apply_chat_template(enable_thinking=False) + tokenizers encode, computed with HF:
expected='prompt_ids: [151644, 872, 198, 3838, 374, 279, 6722, 315, 9625, 30, 151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271]'
grep -qxF "$expected" "$tmp/out" || { echo "prompt ids differ:"; cat "$tmp/out"; exit 1; }
gen=$(grep '^generated_ids: \[' "$tmp/out")
n=$(echo "$gen" | tr -cd ',' | wc -c)
[ "$n" -le 15 ] || { echo "more than 16 generated ids: $gen"; exit 1; }
grep -q '^prefill: 19 tokens in .* ms' "$tmp/err" || { echo "no prefill timing:"; cat "$tmp/err"; exit 1; }
grep -q '^decode: .* tok/s' "$tmp/err" || { echo "no decode timing:"; cat "$tmp/err"; exit 1; }
"$kvwire" generate --model "$tmp/tiny-qwen3" --prompt "What is the capital of France?" --chat \
    --max-new-tokens 16 --threads 1 >"$tmp/out2" 2>/dev/null
diff -u "$tmp/out" "$tmp/out2"

# The other families: Qwen2.5 and Llama-3.2 templates, f32 cache, fixed date; four new tokens exactly unless EOS.
"$kvwire" gen-model --arch qwen2 --preset tiny --seed 2 --tokenizer "$src/models/tokenizers/qwen3" \
    --out "$tmp/tiny-qwen2" >/dev/null
"$kvwire" generate --model "$tmp/tiny-qwen2" --prompt "Hi" --chat --max-new-tokens 4 --cache f32 >"$tmp/q2" 2>/dev/null
grep -q '^prompt_ids: \[151644, 8948, 198' "$tmp/q2" || { echo "no Qwen2.5 system block:"; cat "$tmp/q2"; exit 1; }
"$kvwire" gen-model --arch llama --preset tiny --seed 3 --tokenizer "$src/models/tokenizers/llama3" \
    --out "$tmp/tiny-llama" >/dev/null
"$kvwire" generate --model "$tmp/tiny-llama" --prompt "Hi" --chat --date "23 Nov 2026" --max-new-tokens 4 \
    >"$tmp/l1" 2>/dev/null
grep -q '^prompt_ids: \[128000, 128006, 9125, 128007' "$tmp/l1" || { echo "no Llama header:"; cat "$tmp/l1"; exit 1; }
"$kvwire" generate --model "$tmp/tiny-llama" --prompt "Hello world" --max-new-tokens 3 >"$tmp/l2" 2>/dev/null
grep -qxF 'prompt_ids: [128000, 9906, 1917]' "$tmp/l2" || { echo "no BOS on a raw Llama prompt:"; cat "$tmp/l2"; exit 1; }

# Gemma 3: the tiny model with the real tokenizer (262145 ids, one past the 262144-row vocabulary: the special
# <image_soft_token>, which is allowed). Prompt ids from transformers' apply_chat_template(add_generation_prompt=True)
# with models/tokenizers/gemma3; generated ids from transformers 4.52.4 generate() on this very folder (seed 4), the
# same in fp32 and bf16, top-2 margins >= 9e-3 of the largest logit at every step.
"$kvwire" gen-model --arch gemma3 --preset tiny --seed 4 --tokenizer "$src/models/tokenizers/gemma3" \
    --out "$tmp/tiny-gemma3" >/dev/null
"$kvwire" generate --model "$tmp/tiny-gemma3" --prompt "What is the capital of France?" --chat \
    --max-new-tokens 16 --cache f32 --round none >"$tmp/g1" 2>/dev/null
grep -qxF 'prompt_ids: [2, 105, 2364, 107, 3689, 563, 506, 5279, 529, 7001, 236881, 106, 107, 105, 4368, 107]' \
    "$tmp/g1" || { echo "Gemma 3 chat prompt ids differ:"; cat "$tmp/g1"; exit 1; }
want='generated_ids: [51057, 201858, 89707, 237568, 132791, 132791, 132791, 132791, 132791, 98694, 132791, 224975, '
want+='224975, 224975, 224975, 224975]'
grep -qxF "$want" "$tmp/g1" || { echo "Gemma 3 tokens differ from HF's:"; cat "$tmp/g1"; exit 1; }
"$kvwire" generate --model "$tmp/tiny-gemma3" --prompt "Hello world" --max-new-tokens 3 >"$tmp/g2" 2>/dev/null
grep -qxF 'prompt_ids: [2, 9259, 1902]' "$tmp/g2" || { echo "no <bos> on a raw Gemma prompt:"; cat "$tmp/g2"; exit 1; }

# Per-layer cache codecs: naming every layer int8 over --cache int4 is --cache int8, every layer bf16 over --cache int6
# is --cache bf16 (the same ids); a mix (int6 with the first and last layers int8) runs and repeats itself; a layer
# out of range, an unknown codec, a layer named twice or --cache-layer without a quantized/bf16 --cache fail with
# the reason.
n_layers=$(grep -o '"num_hidden_layers": *[0-9]*' "$tmp/tiny-qwen3/config.json" | grep -o '[0-9]*$')
all8=() all16=()
for ((l = 0; l < n_layers; ++l)); do all8+=(--cache-layer "$l=int8"); all16+=(--cache-layer "$l:bf16"); done
q=(--model "$tmp/tiny-qwen3" --prompt "What is the capital of France?" --max-new-tokens 12 --cache-page-tokens 16)
"$kvwire" generate "${q[@]}" --cache int8 >"$tmp/c8" 2>/dev/null
"$kvwire" generate "${q[@]}" --cache int4 "${all8[@]}" >"$tmp/c48" 2>/dev/null
diff -u "$tmp/c8" "$tmp/c48"
"$kvwire" generate "${q[@]}" --cache bf16 >"$tmp/cb" 2>/dev/null
"$kvwire" generate "${q[@]}" --cache int6 "${all16[@]}" >"$tmp/c6b" 2>/dev/null
diff -u "$tmp/cb" "$tmp/c6b"
"$kvwire" generate "${q[@]}" --cache int6 --cache-layer 0=int8 --cache-layer -1=int8 >"$tmp/cm1" 2>/dev/null
"$kvwire" generate "${q[@]}" --cache int6 --cache-layer -1=int8 --cache-layer 0=int8 >"$tmp/cm2" 2>/dev/null
diff -u "$tmp/cm1" "$tmp/cm2"
grep -q '^generated_ids: \[' "$tmp/cm1" || { echo "no ids from a mixed cache:"; cat "$tmp/cm1"; exit 1; }
set +e
for bad in "--cache int6 --cache-layer $n_layers=int8:out of range" "--cache int6 --cache-layer -$((n_layers + 1))=int8:out of range" \
    "--cache int6 --cache-layer 0=int5:unknown layer codec" "--cache int6 --cache-layer 0=int8 --cache-layer 0=int4:twice" \
    "--cache f32 --cache-layer 0=int8:needs --cache" "--cache-layer 0=int8:needs --cache"; do
    # shellcheck disable=SC2086
    "$kvwire" generate "${q[@]}" ${bad%%:*} >/dev/null 2>"$tmp/ce"
    [ $? -eq 1 ] || { echo "${bad%%:*} should exit 1"; exit 1; }
    grep -q -- "${bad#*:}" "$tmp/ce" || { echo "${bad%%:*}: no reason \"${bad#*:}\": $(cat "$tmp/ce")"; exit 1; }
done
set -e

# Teacher forcing (--force-ids): forced with its own greedy ids, a run prints plain generate's output plus argmax_ids
# (the same ids) and forced_logits; forced with other ids, the new tokens are those ids and the argmax at step k depends
# only on the prompt and the forced ids before k (two forcings sharing 4 ids share the first 5 argmaxes, and the
# argmaxes are not the greedy ones, which feeding back the argmax would give). --ignore-eos: exactly N new tokens.
f=(--model "$tmp/tiny-qwen3" --prompt "What is the capital of France?" --threads 2)
"$kvwire" generate "${f[@]}" --max-new-tokens 8 --ignore-eos >"$tmp/t0" 2>/dev/null
greedy=$(sed -n 's/^generated_ids: \[\(.*\)\]/\1/p' "$tmp/t0")
[ "$(echo "$greedy" | tr -cd ',' | wc -c)" -eq 7 ] || { echo "--ignore-eos: not 8 ids: $greedy"; exit 1; }
"$kvwire" generate "${f[@]}" --force-ids "$greedy" >"$tmp/t1" 2>/dev/null
grep -v '^argmax_ids: \|^forced_logits: ' "$tmp/t1" | diff -u "$tmp/t0" - || { echo "forcing the greedy ids changed"; exit 1; }
grep -qxF "argmax_ids: [$greedy]" "$tmp/t1" || { echo "argmax under greedy forcing differs: $(cat "$tmp/t1")"; exit 1; }
[ "$(grep '^forced_logits: \[' "$tmp/t1" | tr -cd ',' | wc -c)" -eq 7 ] || { echo "not 8 forced logits"; exit 1; }
"$kvwire" generate "${f[@]}" --force-ids "5,6,7,8,9,10,11,12" --max-new-tokens 8 >"$tmp/t2" 2>/dev/null
"$kvwire" generate "${f[@]}" --force-ids "5, 6, 7, 8, 900, 901, 902, 903" >"$tmp/t3" 2>/dev/null
grep -qxF "generated_ids: [5, 6, 7, 8, 9, 10, 11, 12]" "$tmp/t2" || { echo "forced ids not followed: $(cat "$tmp/t2")"; exit 1; }
grep -qxF "generated_ids: [5, 6, 7, 8, 900, 901, 902, 903]" "$tmp/t3" || { echo "forced ids not followed"; exit 1; }
a2=$(sed -n 's/^argmax_ids: \[\(.*\)\]/\1/p' "$tmp/t2")
a3=$(sed -n 's/^argmax_ids: \[\(.*\)\]/\1/p' "$tmp/t3")
[ "${a2%%,*}" = "${greedy%%,*}" ] || { echo "step 0's argmax $a2 is not greedy's first id $greedy"; exit 1; }
[ "$(echo "$a2" | cut -d, -f1-5)" = "$(echo "$a3" | cut -d, -f1-5)" ] || { echo "argmax before the forcings part: $a2 / $a3"; exit 1; }
[ "$a2" != "$greedy" ] || { echo "the forced run's argmax is the greedy run's: forcing had no effect"; exit 1; }
set +e
for bad in "1,x||comma-separated ids" "||comma-separated ids" "1,-2||comma-separated ids" \
    "1,2|--max-new-tokens 3|3 with 2 forced" "1,99999999||outside"; do
    IFS='|' read -r ids extra why <<<"$bad"
    # shellcheck disable=SC2086
    "$kvwire" generate "${f[@]}" --force-ids "$ids" $extra >/dev/null 2>"$tmp/te"
    [ $? -eq 1 ] || { echo "--force-ids '$ids' $extra should exit 1"; exit 1; }
    grep -q -- "$why" "$tmp/te" || { echo "--force-ids '$ids': no reason \"$why\": $(cat "$tmp/te")"; exit 1; }
done
set -e

# Bad invocations: usage errors exit 2, runtime errors exit 1 with a reason.
set +e
"$kvwire" generate --prompt x >/dev/null 2>&1
[ $? -eq 2 ] || { echo "missing --model should exit 2"; exit 1; }
"$kvwire" generate --model "$tmp/tiny-qwen3" --prompt x --max-new-tokens -1 >/dev/null 2>&1
[ $? -eq 2 ] || { echo "negative --max-new-tokens should exit 2"; exit 1; }
"$kvwire" generate --model "$tmp/nonexistent" --prompt x >/dev/null 2>"$tmp/e1"
[ $? -eq 1 ] || { echo "a missing model should exit 1"; exit 1; }
set -e
grep -q 'load model' "$tmp/e1" || { echo "no reason given: $(cat "$tmp/e1")"; exit 1; }
echo ok
