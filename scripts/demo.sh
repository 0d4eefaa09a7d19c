#!/usr/bin/env bash
# demo.sh: installs dependencies, builds kvwire, makes the embedded tiny models with the project's own generator
# (random weights, real Qwen tokenizer) and runs them. As the daemons land, this grows into the two-daemon demo.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
./scripts/build.sh build
kvwire=build/tools/kvwire
out=out/demo
mkdir -p "$out"

echo "== tiny models (kvwire gen-model) =="
"$kvwire" gen-model --arch qwen3 --preset tiny --seed 1 --tokenizer models/tokenizers/qwen3 --out "$out/tiny-qwen3"
"$kvwire" gen-model --arch qwen2 --preset tiny --seed 2 --tokenizer models/tokenizers/qwen3 --out "$out/tiny-qwen2"

echo "== tokenize =="
printf '%s\n' '"Hello, kvwire! 12345 tokens"' | "$kvwire" tokenize --tokenizer models/tokenizers/qwen3

echo "== generate (receiver-shaped tiny Qwen3, chat template) =="
"$kvwire" generate --model "$out/tiny-qwen3" --prompt "What is the capital of France?" --chat --max-new-tokens 16
