#!/usr/bin/env bash
# cli_quantize.sh: `kvwire quantize` from the command line on a gen-model Qwen3 folder (hidden 256, its real
# tokenizer): every --type writes a GGUF file, twice the same bytes; the quantized file is smaller than the bf16 one
# and loads in `kvwire generate` (tokenizer from the folder); a GGUF input is re-quantized; usage errors exit 2.
# Arguments: kvwire binary, source dir, build dir.
set -euo pipefail
kvwire=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

grep -q '^usage: kvwire quantize' <<<"$("$kvwire" quantize --help)" || fail "--help"
"$kvwire" gen-model --arch qwen3 --hidden 256 --head-dim 64 --intermediate 512 --vocab 151936 --seed 3 \
    --tokenizer "$src/models/tokenizers/qwen3" --out "$tmp/m" >/dev/null 2>&1
for t in f32 bf16 q8_0 q4_k q4_k_m; do
    "$kvwire" quantize --model "$tmp/m" --out "$tmp/$t.gguf" --type $t 2>"$tmp/log" || { cat "$tmp/log"; fail "$t"; }
    "$kvwire" quantize --model "$tmp/m" --out "$tmp/$t.again.gguf" --type $t 2>/dev/null
    cmp -s "$tmp/$t.gguf" "$tmp/$t.again.gguf" || fail "--type $t: two runs differ"
done
grep -q "Q6_K" "$tmp/log" || fail "q4_k_m holds no Q6_K tensor: $(cat "$tmp/log")"
bf16=$(stat -c %s "$tmp/bf16.gguf")
q8=$(stat -c %s "$tmp/q8_0.gguf")
q4=$(stat -c %s "$tmp/q4_k.gguf")
[ "$q8" -lt "$bf16" ] && [ "$q4" -lt "$q8" ] || fail "sizes bf16 $bf16, q8_0 $q8, q4_k $q4"
out=$("$kvwire" generate --model "$tmp/q8_0.gguf" --tokenizer "$tmp/m" --prompt "Hello" --max-new-tokens 4 2>/dev/null)
grep -q "^prompt_ids: \[" <<<"$out" || fail "generate on the Q8_0 file: $out"
# GGUF in: the Q8_0 file re-quantized to Q4_K keeps the metadata and is deterministic too
"$kvwire" quantize --model "$tmp/q8_0.gguf" --out "$tmp/r1.gguf" --type q4_k 2>/dev/null
"$kvwire" quantize --model "$tmp/q8_0.gguf" --out "$tmp/r2.gguf" --type q4_k 2>/dev/null
cmp -s "$tmp/r1.gguf" "$tmp/r2.gguf" || fail "GGUF input: two runs differ"
# usage errors
set +e
"$kvwire" quantize --model "$tmp/m" --out "$tmp/x.gguf" >/dev/null 2>&1
[ $? -eq 2 ] || fail "no --type: not exit 2"
"$kvwire" quantize --model "$tmp/m" --out "$tmp/x.gguf" --type q3_k >/dev/null 2>&1
[ $? -eq 2 ] || fail "--type q3_k: not exit 2"
"$kvwire" quantize --model "$tmp/q8_0.gguf" --out "$tmp/x.gguf" --type q8_0 --vocab-from "$tmp/q8_0.gguf" >/dev/null 2>&1
[ $? -eq 1 ] || fail "--vocab-from with a GGUF input: not refused"
"$kvwire" quantize --model "$tmp/nonexistent" --out "$tmp/x.gguf" --type q8_0 >/dev/null 2>&1
[ $? -eq 1 ] || fail "a missing model: not exit 1"
[ ! -e "$tmp/x.gguf" ] || fail "a failed run left an output file"
echo ok
