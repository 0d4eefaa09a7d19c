#!/usr/bin/env bash
# cli_daemons_backend.sh: the compute.* keys that choose where a daemon's models run. compute.backend cuda on a
# machine without a usable GPU (or a build without CUDA) stops the daemon at start with the reason; a
# compute.memory_limit_mb too small for the model stops it naming the budget; a sufficient limit serves (ready file
# written, clean SIGTERM), and a request that does not fit it gets HTTP 500 naming the limit while the daemon goes on
# serving. Uses the tiny models of the fixture test_daemons_models.
. "$(dirname "$0")/../cli_lib.sh" "$@"
models=$build/tests/daemons/models
[ -d "$models/tiny-fuser" ] || fail "the tiny models of test_daemons_models are missing"
sharer=("$build/sharer/sharerd" --config "$src/deploy/config/sharerd.tiny.yaml" --listen.port 0
    --models.0.path "$models/tiny-qwen2" --models.1.path "$models/tiny-qwen3")
receiver=("$build/receiver/receiverd" --config "$src/deploy/config/receiverd.tiny.yaml" --http.port 0
    --model.path "$models/tiny-qwen3" --fusers.0.path "$models/tiny-fuser" --sharers.0.port 1)
# expect_start_failure NAME PATTERN CMD...: CMD exits non-zero at start with PATTERN in its errors
expect_start_failure() {
    local name=$1 pattern=$2 rc
    shift 2
    set +e
    timeout 120 "$@" 2>err.txt
    rc=$?
    set -e
    [ $rc != 0 ] && [ $rc != 124 ] || fail "$name: exit $rc, expected a failure at start"
    grep -qE "$pattern" err.txt || fail "$name: the reason ($pattern) is not in its errors: $(cat err.txt)"
}
# start_with_limit NAME MIB CMD...: starts CMD with compute.memory_limit_mb MIB and waits for its ready file (pid in $pid)
start_with_limit() {
    local name=$1 mib=$2
    shift 2
    rm -f ready
    "$@" --compute.memory_limit_mb "$mib" --runtime.ready_file ready 2>log.txt &
    pid=$!
    wait_ready ready $pid || fail "$name with a $mib MiB limit did not start: $(cat log.txt)"
}
# stop_with_limit NAME MIB: SIGTERM to $pid, which must exit 0
stop_with_limit() {
    kill -TERM $pid
    wait $pid || fail "$1 with a $2 MiB limit exited $? after SIGTERM: $(cat log.txt)"
}
for d in sharer receiver; do
    declare -n cmd=$d
    if ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
        echo "$d: a GPU device node exists, compute.backend cuda not expected to fail here (not checked)"
    else
        expect_start_failure "$d cuda" "no CUDA device|built without CUDA" "${cmd[@]}" --compute.backend cuda
    fi
    expect_start_failure "$d 1 MiB" "does not fit its memory limit.*KW_E_NOMEM" "${cmd[@]}" \
        --compute.memory_limit_mb 1
    start_with_limit "$d" 4096 "${cmd[@]}"
    stop_with_limit "$d" 4096
done
# a request that does not fit the memory limit gets a clear error, and the daemon serves the next one: the tiny model
# needs about 54 MiB; a 30,000-token prompt's cache alone takes 30 MiB more
start_with_limit receiver 64 "${receiver[@]}"
port=$(sed -n 's/^port=//p' ready)
url=http://127.0.0.1:$port/v1/completions
printf '{"prompt": "%s", "max_tokens": 2, "kvwire": {"mode": "receiver_only"}}' "$(yes word | head -n 30000 | tr '\n' ' ')" \
    >big.json
code=$(curl -s -o reply.json -w '%{http_code}' "$url" -d @big.json)
[ "$code" = 500 ] && jq -e '.error.code == "KW_E_NOMEM" and (.error.message | test("does not fit its memory limit"))' \
    reply.json >/dev/null || fail "a request over the memory limit: HTTP $code $(cat reply.json)"
code=$(curl -s -o reply.json -w '%{http_code}' "$url" -d '{"prompt": "hi", "max_tokens": 2, "kvwire": {"mode": "receiver_only"}}')
[ "$code" = 200 ] || fail "after a request over the memory limit: HTTP $code $(cat reply.json)"
stop_with_limit receiver 64
echo "daemon backends and memory limits: ok"
