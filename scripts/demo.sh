#!/usr/bin/env bash
# demo.sh: installs dependencies, builds kvwire, makes the embedded tiny models (random weights, real Qwen tokenizer)
# with the project's own generators and runs the pipeline on them in one process: receiver-only generation, then
# C2C with the sharer's KV passed through a real KVWire int4 blob. The models are random, so the text is noise; the
# point is the data path and its measured bytes and timings. The two-daemon demo replaces the in-process run when
# sharerd/receiverd land.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
./scripts/build.sh build
kvwire=build/tools/kvwire
out=out/demo
mkdir -p "$out"

echo
echo "== 1. tiny models: receiver (Qwen3-style), sharer (Qwen2-style), fuser (C2C layout, .pt files) =="
# Untied output embeddings (--tied 0): a tiny random model with tied ones mostly repeats its last input token, which
# hides the data path; untied, its (meaningless) tokens change with the cache, so fusion visibly changes the output.
"$kvwire" gen-model --arch qwen3 --preset tiny --tied 0 --seed 1 --tokenizer models/tokenizers/qwen3 \
    --out "$out/tiny-qwen3"
"$kvwire" gen-model --arch qwen2 --preset tiny --tied 0 --seed 2 --tokenizer models/tokenizers/qwen3 \
    --out "$out/tiny-qwen2"
"$kvwire" gen-fuser --receiver "$out/tiny-qwen3" --sharer "$out/tiny-qwen2" --out "$out/tiny-fuser" --seed 3 \
    --hidden 64 --intermediate 64

echo
echo "== 2. tokenize with the real Qwen tokenizer =="
printf '%s\n' '"Hello, kvwire! 12345 tokens"' | "$kvwire" tokenize --tokenizer models/tokenizers/qwen3

echo
echo "== 3. receiver alone: greedy generation with the Qwen3 chat template =="
"$kvwire" generate --model "$out/tiny-qwen3" --prompt "What is the capital of France?" --chat --max-new-tokens 16

echo
echo "== 4. C2C: sharer KV -> KVWire int4 blob -> projector -> fused receiver cache -> decode =="
"$kvwire" c2c --receiver "$out/tiny-qwen3" --sharer "$out/tiny-qwen2" --fuser "$out/tiny-fuser" \
    --mc-json '{"question": "Which planet is known as the red planet?", "choices": ["Venus", "Mars", "Jupiter", "Saturn"]}' \
    --max-new-tokens 16 --wire int4 --wire-gran head --wire-dump "$out/blob"

echo
echo "== 5. the blob that crossed the (in-process) wire, verified byte by byte =="
"$kvwire" inspect "$out/blob.0.kvw"
