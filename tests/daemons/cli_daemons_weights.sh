#!/usr/bin/env bash
# cli_daemons_weights.sh KVWIRE SRC BUILD: receiverd's compute.weights reaches the model. On the real SmolLM2-135M-Instruct
# GGUF (fetched and cached by kvwire fetch-model; skipped, exit 77, when it cannot be downloaded) a receiver_only chat
# request gives the completion ids `kvwire generate --chat --weights MODE` gives, for MODE quantized (the default),
# quantized-int8 and bf16-act; and the first two differ (the chat prompt below is one whose answer int8 activations
# change: "The capital..." against "L'Etoile..."), so a daemon that ignored the key would fail. Then sharerd's key:
# a kv_direct request (bf16 KV) to a receiverd at the default weights, served by a sharerd with compute.weights
# quantized, gives the default mode's ids, and by one with quantized-int8 other ids (the sharer's KV decides them).
. "$(dirname "$0")/../cli_lib.sh" "$@"
pid='' spid=''
trap 'kill $pid $spid 2>/dev/null || true; rm -rf "$tmp"' EXIT # a failed check stops the daemons too
real_model smollm2-135m-instruct
question="What is the capital of France?"
declare -A ids
for mode in quantized quantized-int8 bf16-act; do
    "$kvwire" generate --model "$model" --chat --prompt "$question" --max-new-tokens 8 --threads 1 --weights $mode \
        >gen.txt 2>/dev/null || fail "$mode: kvwire generate failed"
    want=$(sed -n 's/^generated_ids: \[\(.*\)\]$/\1/p' gen.txt | tr -d ' ')
    [ -n "$want" ] || fail "$mode: no ids in kvwire generate's output: $(cat gen.txt)"
    rm -f ready
    printf 'http:\n  host: 127.0.0.1\n  port: 0\nmodel:\n  name: smol\n  path: %s\ncompute:\n  threads: 1\n  weights: %s\n' \
        "$model" $mode >rd.yaml
    "$build/receiver/receiverd" --config rd.yaml --runtime.ready_file ready 2>log.txt &
    pid=$!
    wait_ready ready $pid || fail "$mode: receiverd did not start: $(cat log.txt)"
    grep -q "(weights $mode)" log.txt || fail "$mode: the load log does not name the mode: $(cat log.txt)"
    port=$(sed -n 's/^port=//p' ready)
    jq -n --arg q "$question" \
        '{messages: [{role: "user", content: $q}], max_tokens: 8, temperature: 0, kvwire: {mode: "receiver_only"}}' \
        >req.json
    curl -sS -o resp.json "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
        -d @req.json || fail "$mode: the request failed"
    kill -TERM $pid
    wait $pid || fail "$mode: receiverd exited $? after SIGTERM: $(cat log.txt)"
    pid=
    got=$(jq -r '.kvwire.completion_ids | map(tostring) | join(",")' resp.json) ||
        fail "$mode: no completion ids: $(cat resp.json)"
    [ "$got" = "$want" ] || fail "$mode: receiverd generated [$got], kvwire generate [$want]"
    ids[$mode]=$want
    echo "$mode: [$got] from both"
done
[ "${ids[quantized]}" != "${ids[quantized-int8]}" ] ||
    fail "quantized and quantized-int8 gave the same ids [${ids[quantized]}]: the prompt no longer tells them apart"
echo "compute.weights: receiverd = kvwire generate for every mode: ok"

# sharerd: its compute.weights decides the KV it sends
declare -A direct
for mode in quantized quantized-int8; do
    rm -f ready sready
    "$build/sharer/sharerd" --models.0.name=smol --models.0.path="$model" --listen.host=127.0.0.1 --listen.port=0 \
        --runtime.ready_file=sready --compute.threads=1 --compute.weights=$mode 2>slog.txt &
    spid=$!
    wait_ready sready $spid || fail "sharerd $mode: did not start: $(cat slog.txt)"
    grep -q "(weights $mode)" slog.txt || fail "sharerd $mode: the load log does not name the mode: $(cat slog.txt)"
    "$build/receiver/receiverd" --model.name=smol --model.path="$model" --sharers.0.name=local \
        --sharers.0.host=127.0.0.1 --sharers.0.port="$(sed -n 's/^port=//p' sready)" --http.host=127.0.0.1 \
        --http.port=0 --runtime.ready_file=ready --compute.threads=1 2>log.txt &
    pid=$!
    wait_ready ready $pid || fail "sharerd $mode: receiverd did not start: $(cat log.txt)"
    port=$(sed -n 's/^port=//p' ready)
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/health" | grep -q '"connected":true' && break
        sleep 0.1
    done
    jq -n --arg q "$question" '{messages: [{role: "user", content: $q}], max_tokens: 8, temperature: 0,
        kvwire: {mode: "kv_direct", policy: {codec: "bf16"}}}' >req.json
    curl -sS -o resp.json "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
        -d @req.json || fail "sharerd $mode: the request failed"
    kill -TERM $pid $spid
    wait $pid || fail "sharerd $mode: receiverd exited $? after SIGTERM: $(cat log.txt)"
    wait $spid || fail "sharerd $mode: sharerd exited $? after SIGTERM: $(cat slog.txt)"
    pid='' spid=''
    direct[$mode]=$(jq -r '.kvwire.completion_ids | map(tostring) | join(",")' resp.json) ||
        fail "sharerd $mode: no completion ids: $(cat resp.json)"
    [ -n "${direct[$mode]}" ] || fail "sharerd $mode: no completion ids: $(cat resp.json)"
    echo "sharerd $mode, kv_direct: [${direct[$mode]}]"
done
[ "${direct[quantized]}" = "${ids[quantized]}" ] ||
    fail "kv_direct from a quantized sharer gave [${direct[quantized]}], the mode's own run [${ids[quantized]}]"
[ "${direct[quantized-int8]}" != "${direct[quantized]}" ] ||
    fail "sharerd's quantized-int8 KV gave the quantized ids [${direct[quantized]}]: compute.weights did not reach it"
echo "compute.weights: sharerd's mode reaches the KV it sends: ok"
