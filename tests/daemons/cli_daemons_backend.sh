#!/usr/bin/env bash
# cli_daemons_backend.sh: the compute.* keys that choose where a daemon's models run. compute.backend cuda on a
# machine without a usable GPU (or a build without CUDA) stops the daemon at start with the reason; a
# compute.memory_limit_mb too small for the model stops it naming the budget; a sufficient limit serves (ready file
# written, clean SIGTERM). Uses the tiny models of the fixture test_daemons_models.
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
for d in sharer receiver; do
    declare -n cmd=$d
    if ls /dev/nvidia[0-9]* >/dev/null 2>&1; then
        echo "$d: a GPU device node exists, compute.backend cuda not expected to fail here (not checked)"
    else
        expect_start_failure "$d cuda" "no CUDA device|built without CUDA" "${cmd[@]}" --compute.backend cuda
    fi
    expect_start_failure "$d 1 MiB" "does not fit its memory limit.*KW_E_NOMEM" "${cmd[@]}" \
        --compute.memory_limit_mb 1
    rm -f ready
    "${cmd[@]}" --compute.memory_limit_mb 4096 --runtime.ready_file ready 2>log.txt &
    pid=$!
    for _ in $(seq 600); do
        [ -s ready ] && break
        kill -0 $pid 2>/dev/null || break
        sleep 0.1
    done
    [ -s ready ] || fail "$d with a 4 GiB limit did not start: $(cat log.txt)"
    kill -TERM $pid
    wait $pid || fail "$d with a 4 GiB limit exited $? after SIGTERM: $(cat log.txt)"
done
echo "daemon backends and memory limits: ok"
