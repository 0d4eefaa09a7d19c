#!/usr/bin/env bash
# cli_generate_q8_llamacpp.sh KVWIRE SRC BUILD: `kvwire generate --weights quantized-int8` on SmolLM2-135M-Instruct as
# Q8_0 (the real GGUF of kvwire fetch-model, skipped with exit 77 when it cannot be had, made Q8_0 by kvwire quantize as
# bench/peer/llamacpp.sh does) gives llama.cpp's own greedy ids where it can: 24 tokens of two of llamacpp.sh's prompts
# and the first 14 of a third, each the ids of llama.cpp 0c1e570 (llama-cpp-python 0.3.36) with flash attention off,
# from `bench/peer/q8parity.sh` (its llama_trace, FA 0: `llama_trace smollm2-q8_0.gguf 24 PROMPT 0 2`). Token 15 of
# the third prompt and the fourth prompt differ, and so does llama.cpp with flash attention on (llama-simple's choice),
# on every prompt: the int8 activation rounding turns any last-bit difference into a different rounding noise, so
# greedy ids agree only as far as every op upstream agrees bit for bit (docs/BENCHMARKS.md, "Greedy parity with
# llama.cpp's own Q8_0"). These ids pin S8_X8's rule (the f16 activation scale: the f32 one before it gave other ids
# on "The capital of France is") and everything upstream of it; a change that moves them is a numerics change to
# document.
. "$(dirname "$0")/../cli_lib.sh" "$@"
real_model smollm2-135m-instruct
"$kvwire" quantize --model "$model" --out "$tmp/smollm2-q8_0.gguf" --type q8_0 >/dev/null 2>&1 ||
    fail "quantize to Q8_0"
fail=0
check() { # prompt new_tokens ids
    local got
    "$kvwire" generate --model "$tmp/smollm2-q8_0.gguf" --weights quantized-int8 --prompt "$1" \
        --max-new-tokens "$2" >"$tmp/gen.txt" 2>&1 || fail "kvwire generate exit $? on \"$1\": $(tail -3 "$tmp/gen.txt")"
    got=$(sed -n 's/^generated_ids: \[\(.*\)\]$/\1/p' "$tmp/gen.txt" | tr -d ',')
    if [ "$got" = "$3" ]; then
        echo "ok: \"$1\""
    else
        echo "FAIL: \"$1\": $got, llama.cpp: $3"
        fail=1
    fi
}
check "def fibonacci(n):" 24 \
    "472 585 304 1758 216 32 42 448 1003 216 33 472 1003 304 1672 3987 46477 24 94 731 216 33 25 198"
check "Once upon a time, there was a" 24 \
    "1165 3102 32047 281 260 1911 282 253 14055 2240 30 378 3102 436 1343 327 624 9077 6734 28 284 260 3102 506"
check "The capital of France is" 14 "7042 30 198 198 504 1797 1918 553 253 2155 282 4723 216 35"
exit $fail
