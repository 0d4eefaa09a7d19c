#!/usr/bin/env bash
# make_models.sh KVWIRE SOURCE_DIR BUILD_DIR: the fixture of the daemon tests: the embedded tiny models in
# BUILD_DIR/tests/daemons/models (a Qwen3-style receiver, a Qwen2-style sharer, the random fuser between them, and a
# fuser that takes a Qwen3-shaped sharer, for the wrong-pair tests; a 3-layer receiver and its fuser from the Qwen2
# sharer), made by the project's own generators.
set -euo pipefail
kvwire=$1 src=$2 build=$3
out=$build/tests/daemons/models
mkdir -p "$out"
tok=$src/models/tokenizers/qwen3
"$kvwire" gen-model --arch qwen3 --preset tiny --tied 0 --seed 1 --tokenizer "$tok" --out "$out/tiny-qwen3" >/dev/null
"$kvwire" gen-model --arch qwen2 --preset tiny --tied 0 --seed 2 --tokenizer "$tok" --out "$out/tiny-qwen2" >/dev/null
"$kvwire" gen-fuser --receiver "$out/tiny-qwen3" --sharer "$out/tiny-qwen2" --out "$out/tiny-fuser" --seed 3 \
    --hidden 64 --intermediate 64 >/dev/null
"$kvwire" gen-fuser --receiver "$out/tiny-qwen3" --sharer "$out/tiny-qwen3" --out "$out/fuser-qwen3" --seed 5 \
    --hidden 64 --intermediate 64 >/dev/null
# a 3-layer receiver whose fuser feeds tiny-qwen2's layer 0 to two receiver layers (the receiver-aware selections'
# per-target subsets, test_daemons_rscore)
"$kvwire" gen-model --arch qwen3 --preset tiny --layers 3 --tied 0 --seed 1 --tokenizer "$tok" \
    --out "$out/tiny-qwen3-l3" >/dev/null
"$kvwire" gen-fuser --receiver "$out/tiny-qwen3-l3" --sharer "$out/tiny-qwen2" --out "$out/tiny-fuser-l3" --seed 3 \
    --hidden 64 --intermediate 64 >/dev/null
echo "models: $(ls "$out")"
