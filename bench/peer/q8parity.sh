#!/usr/bin/env bash
# q8parity.sh: why `kvwire generate --weights quantized-int8` and llama.cpp disagree on SmolLM2 Q8_0's greedy tokens
# (issue 10). Not part of CI; run bench/peer/llamacpp.sh first (its llama.cpp build and model files are reused).
# 1. Builds llama_trace.cpp (llama-simple's greedy loop plus flash attention on/off, threads, tensor dumps) against
#    llamacpp.sh's llama.cpp build, into that build's bin/ (nothing of llama.cpp enters this repository).
# 2. Greedy ids, 24 new tokens, for llamacpp.sh's four prompts: llama.cpp on the Q8_0 file with flash attention on
#    (llama-simple's choice here: "auto") and off, llama.cpp on the same weights as F32 (on, off), kvwire
#    --weights quantized-int8 and --weights quantized; each row ends with the index of its first token that differs from
#    llama.cpp Q8_0 with flash attention on ("=" if none).
# 3. The third prompt's prompt pass (step 0) dumped by llama.cpp with flash attention on and off, Q8_0 and F32, and
#    compared layer by layer (q8parity.py compare): how far one small difference (the attention's) travels.
# 4. q8parity.py rule: the first layer's matmuls and norm recomputed from llama.cpp's own dumped inputs under ggml's
#    rules and kvwire's (see q8parity.py).
# Environment: KVWIRE (default build/tools/kvwire), THREADS (2), LLAMACPP_PY_VERSION (0.3.36), PEER_CACHE; python3
# with numpy.
set -euo pipefail
peer_name=q8parity.sh
. "$(dirname "$0")/peer_lib.sh"
peer_need_kvwire
peer_need "$build/src/libllama.a" "$mdir/smollm2-q8_0.gguf" "$mdir/smollm2-q8_0-as-f32.gguf"
trace="$build/bin/llama_trace"
"$here/bench/peer/build_llama_trace.sh" "$trace"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ids_lc() { # file fa prompt
    "$trace" "$mdir/$1" 24 "$3" "$2" "$threads" 2>/dev/null | sed -n 's/^tok [0-9]* id=\([0-9]*\) .*/\1/p' | tr '\n' ' '
}
ids_kw() {
    "$kvwire" generate --model "$mdir/smollm2-q8_0.gguf" --weights "$1" --prompt "$2" --max-new-tokens 24 \
        --threads "$threads" 2>/dev/null | sed -n 's/^generated_ids: \[\(.*\)\]/\1/p' | tr -d ','
}
first_diff() { # index of the first differing id of two space-separated lists, "=" if none
    local -a a b
    read -r -a a <<<"$1"
    read -r -a b <<<"$2"
    for i in "${!a[@]}"; do [ "${a[$i]}" = "${b[$i]:-}" ] || { echo "$i"; return; }; done
    [ "${#a[@]}" = "${#b[@]}" ] && echo "=" || echo "${#a[@]}"
}

prompts=("The capital of France is" "def fibonacci(n):" "Once upon a time, there was a" "The three primary colors are")
echo "## greedy ids (24 new tokens); last column: first index differing from llama.cpp Q8_0 flash-attention on"
for p in "${prompts[@]}"; do
    echo "prompt \"$p\""
    ref=$(ids_lc smollm2-q8_0.gguf 1 "$p")
    for row in "llama.cpp Q8_0 fa=on |lc smollm2-q8_0.gguf 1" "llama.cpp Q8_0 fa=off|lc smollm2-q8_0.gguf 0" \
        "llama.cpp F32 fa=on  |lc smollm2-q8_0-as-f32.gguf 1" "llama.cpp F32 fa=off |lc smollm2-q8_0-as-f32.gguf 0" \
        "kvwire quantized-int8|kw quantized-int8" "kvwire quantized     |kw quantized"; do
        IFS='|' read -r label how <<<"$row"
        read -r kind a b <<<"$how"
        if [ "$kind" = lc ]; then ids=$(ids_lc "$a" "$b" "$p"); else ids=$(ids_kw "$a" "$p"); fi
        echo "  $label  $ids  [$(first_diff "$ref" "$ids")]"
    done
done

p=${prompts[2]}
echo
echo "## llama.cpp, prompt \"$p\", step 0: flash attention on vs off, layer by layer (a: on, b: off)"
for f in q8_0 q8_0-as-f32; do
    for fa in 1 0; do
        mkdir -p "$tmp/$f-$fa"
        "$trace" "$mdir/smollm2-$f.gguf" 1 "$p" "$fa" "$threads" "$tmp/$f-$fa" "*" >/dev/null 2>&1
    done
    echo "### $f"
    python3 "$here/bench/peer/q8parity.py" compare "$tmp/$f-1" "$tmp/$f-0" |
        grep -E '^(tensor|embd|attn_norm-0|Vcur-0|kqv_out-0|attn_out-0|l_out-(0|1|2|5|10|20|29)|result_\w+) '
done
echo
echo "## the first layer's Q8_0 matmuls and norm, recomputed from llama.cpp's dumped inputs (Q8_0, fa=on)"
PYTHONPATH="$llama_src/gguf-py${PYTHONPATH:+:$PYTHONPATH}" python3 "$here/bench/peer/q8parity.py" rule "$tmp/q8_0-1" \
    "$mdir/smollm2-q8_0.gguf"
