#!/usr/bin/env bash
# build_llama_trace.sh OUT: builds bench/peer/llama_trace.cpp against bench/peer/llamacpp.sh's llama.cpp build into OUT
# (nothing of llama.cpp enters this repository), unless OUT is newer than the source. Used by q8parity.sh and
# q8agree.sh. Environment: LLAMACPP_PY_VERSION (0.3.36), PEER_CACHE.
set -euo pipefail
peer_name=build_llama_trace.sh
. "$(dirname "$0")/peer_lib.sh"
out=$1
peer_need "$build/src/libllama.a"
if [ ! -x "$out" ] || [ "$here/bench/peer/llama_trace.cpp" -nt "$out" ]; then
    log "building $out"
    c++ -O2 -std=c++17 -I"$llama_src/include" -I"$llama_src/ggml/include" "$here/bench/peer/llama_trace.cpp" -o "$out.tmp$$" \
        "$build/src/libllama.a" "$build/ggml/src/libggml.a" "$build/ggml/src/libggml-cpu.a" \
        "$build/ggml/src/libggml-base.a" -ldl -lm "$(c++ -print-file-name=libgomp.so)" -lpthread
    mv "$out.tmp$$" "$out"
fi
