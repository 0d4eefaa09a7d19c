#!/usr/bin/env bash
# demo.sh: installs dependencies, builds kvwire, makes the embedded tiny models (random weights, real Qwen tokenizer)
# with the project's own generators, shows the pieces in one process (tokenizer, the receiver alone, one C2C request
# through a real KVWire int4 blob that `kvwire inspect` then verifies), and then the product: sharerd and receiverd on
# loopback (deploy/config/*.tiny.yaml, ephemeral ports), requests in every mode with curl, the answer with its bytes
# and timings, /metrics, and both daemons stopped with SIGTERM. The models are random, so the text is noise; the point
# is the data path and its measured bytes and timings.
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
echo "== 4. C2C in one process: sharer KV -> KVWire int4 blob -> projector -> fused receiver cache -> decode =="
"$kvwire" c2c --receiver "$out/tiny-qwen3" --sharer "$out/tiny-qwen2" --fuser "$out/tiny-fuser" \
    --mc-json '{"question": "Which planet is known as the red planet?", "choices": ["Venus", "Mars", "Jupiter", "Saturn"]}' \
    --max-new-tokens 16 --wire int4 --wire-gran head --wire-dump "$out/blob"

echo
echo "== 5. the blob that crossed the (in-process) wire, verified byte by byte =="
"$kvwire" inspect "$out/blob.0.kvw"

echo
echo "== 6. the two daemons on loopback: sharerd (deploy/config/sharerd.tiny.yaml) and receiverd =="
sharer_pid=
receiver_pid=
stop_daemons() {
    for pid in $receiver_pid $sharer_pid; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_daemons EXIT
rm -f "$out/sharerd.ready" "$out/receiverd.ready"
build/sharer/sharerd --config deploy/config/sharerd.tiny.yaml --listen.port 0 \
    --runtime.ready_file "$out/sharerd.ready" 2>"$out/sharerd.log" &
sharer_pid=$!
wait_port() { # the port a daemon wrote to its ready file
    for _ in $(seq 600); do
        if [ -s "$1" ]; then
            sed 's/port=//' "$1"
            return 0
        fi
        sleep 0.1
    done
    echo "demo: $2 did not start; its log:" >&2
    cat "$3" >&2
    return 1
}
sharer_port=$(wait_port "$out/sharerd.ready" sharerd "$out/sharerd.log")
build/receiver/receiverd --config deploy/config/receiverd.tiny.yaml --http.port 0 --sharers.0.port "$sharer_port" \
    --runtime.ready_file "$out/receiverd.ready" 2>"$out/receiverd.log" &
receiver_pid=$!
port=$(wait_port "$out/receiverd.ready" receiverd "$out/receiverd.log")
for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.1
done
echo "sharerd on 127.0.0.1:$sharer_port, receiverd on http://127.0.0.1:$port"
curl -s "http://127.0.0.1:$port/health"
echo

ask() { # ask TITLE KVWIRE_JSON: one chat request, then the answer, the bytes and the timings
    echo
    echo "-- $1"
    echo "   kvwire: $2"
    curl -s "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d @- <<EOF | jq -r '
        if .error then "   error: \(.error.code): \(.error.message)" else
        "   answer: \(.choices[0].message.content | @json)",
        "   tokens: prompt \(.usage.prompt_tokens), completion \(.usage.completion_tokens) \(.kvwire.completion_ids)",
        "   bytes:  blob \(.kvwire.bytes.blob), socket in \(.kvwire.bytes.socket_in) / out \(.kvwire.bytes.socket_out) (frames: \(.kvwire.bytes.frames_in.wire) WIRE + \(.kvwire.bytes.frames_in.control_bytes) B control), relay text \(.kvwire.bytes.text), K/V at cache dtype \(.kvwire.codec.kv_bytes)",
        "   sent:   \(.kvwire.selection.tokens_sent) of \(.kvwire.selection.tokens_total) rows over \(.kvwire.selection.layers_sent) layers; fused \(.kvwire.fusion.tokens_fused) tokens in \(.kvwire.fusion.layers_fused) layers",
        "   ms:     " + (.kvwire.timings_ms | to_entries | map(select(.value > 0) | "\(.key) \(.value * 1000 | round / 1000)") | join(", "))
        end'
{"messages": [{"role": "user", "content": "Which planet is known as the red planet?"}], "max_tokens": 12, "kvwire": $2}
EOF
}
ask "c2c: the sharer's KV through the fuser, bf16 (lossless for a bf16 cache)" '{"mode": "c2c"}'
ask "c2c: int4 per head, half the tokens by K norm" \
    '{"mode": "c2c", "policy": {"codec": "int4", "granularity": "head", "selection": "knorm_topk", "proportion": 0.5}}'
ask "kv_direct: the receiver's own model prefills on the sharer, int8 per token over the wire" \
    '{"mode": "kv_direct", "policy": {"codec": "int8"}}'
ask "receiver_only: no transfer" '{"mode": "receiver_only"}'
ask "text_relay: the sharer writes a background message (capped at 64 UTF-8 bytes) that the receiver reads" \
    '{"mode": "text_relay", "relay": {"max_tokens": 32, "max_bytes": 64}}'

echo
echo "== 7. /metrics (excerpt) =="
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^kvwire_(requests_total\{.*outcome="ok"|bytes_total|generated|sharer_connected)' |
    grep -v ' 0$' || true

echo
echo "== 8. SIGTERM: both daemons finish what is in flight and stop =="
stop_daemons
trap - EXIT
tail -n 1 "$out/receiverd.log" "$out/sharerd.log"
