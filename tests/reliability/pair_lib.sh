# pair_lib.sh: the pair on the tiny models for the reliability scripts, sourced after tests/cli_lib.sh:
#   start_pair RECEIVERD_OPTIONS...
# starts sharerd and receiverd (tests/deploy/daemon_lib.sh: killed on exit) on ephemeral loopback ports with the
# models of the test_daemons_models fixture, one compute thread each, receiverd with the options given, and waits
# until receiverd is healthy. Sets sharer_pid, sharer_port, receiver_pid, receiver_port, base (receiverd's URL) and
# kvload. Under AddressSanitizer, freed memory waits in a quarantine (256 MB by default) that would read as memory
# growth: a small one fills during a warm-up and then stays flat, so RSS samples show the daemons' own memory.
models=$build/tests/daemons/models
[ -d "$models/tiny-qwen3" ] || fail "no tiny models in $models (the test_daemons_models fixture makes them)"
. "$src/tests/deploy/daemon_lib.sh"
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=8:thread_local_quarantine_size_kb=256
kvload=$build/loadgen/kvload

start_pair() {
    start sharer "$build/sharer/sharerd" --config "$src/deploy/config/sharerd.tiny.yaml" --listen.port=0 \
        --models.0.path="$models/tiny-qwen2" --models.1.path="$models/tiny-qwen3" --compute.threads=1
    sharer_pid=${pids[-1]} sharer_port=$port
    start receiver "$build/receiver/receiverd" --config "$src/deploy/config/receiverd.tiny.yaml" --http.port=0 \
        --model.path="$models/tiny-qwen3" --fusers.0.path="$models/tiny-fuser" --sharers.0.port="$sharer_port" \
        --compute.threads=1 "$@"
    receiver_pid=${pids[-1]} receiver_port=$port
    base=http://127.0.0.1:$receiver_port
    for _ in $(seq 600); do
        curl -sf "$base/health" | jq -e '.status == "ok"' >/dev/null 2>&1 && return
        sleep 0.1
    done
    fail "receiverd never became healthy: $(curl -s "$base/health")"
}
