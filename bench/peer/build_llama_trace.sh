#!/usr/bin/env bash
# build_llama_trace.sh OUT: builds bench/peer/llama_trace.cpp against bench/peer/llamacpp.sh's llama.cpp build into OUT
# (nothing of llama.cpp enters this repository), unless OUT is newer than the source. Used by q8parity.sh and
# q8agree.sh. Environment: LLAMACPP_PY_VERSION (0.3.36), PEER_CACHE.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
version=${LLAMACPP_PY_VERSION:-0.3.36}
cache=${PEER_CACHE:-$HOME/.cache/kvwire/peer}
src="$cache/llama_cpp_python-$version/vendor/llama.cpp"
build="$cache/build-$version"
out=$1
[ -e "$build/src/libllama.a" ] || { echo "[build_llama_trace.sh] missing $build: run bench/peer/llamacpp.sh" >&2; exit 1; }
if [ ! -x "$out" ] || [ "$here/bench/peer/llama_trace.cpp" -nt "$out" ]; then
    echo "[build_llama_trace.sh] building $out" >&2
    c++ -O2 -std=c++17 -I"$src/include" -I"$src/ggml/include" "$here/bench/peer/llama_trace.cpp" -o "$out.tmp$$" \
        "$build/src/libllama.a" "$build/ggml/src/libggml.a" "$build/ggml/src/libggml-cpu.a" \
        "$build/ggml/src/libggml-base.a" -ldl -lm "$(c++ -print-file-name=libgomp.so)" -lpthread
    mv "$out.tmp$$" "$out"
fi
