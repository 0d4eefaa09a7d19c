#!/usr/bin/env bash
# workers.sh [BUILD_DIR] [REQUESTS] [CONCURRENCY]: receiverd throughput with compute.workers 1 against 2 on the CPU
# backend. Generates a small random Qwen3 (4 layers, hidden 512, 152k vocabulary, bf16: enough compute per token to
# matter), starts receiverd without a sharer for each worker count (compute.threads 1, so a worker is one core), sends
# REQUESTS receiver_only chat requests (32 tokens each) with CONCURRENCY in flight (curl, xargs -P) and prints the
# wall time and requests/s of each run, and whether both runs answered the same ids. On the CPU the gain can be at most
# the cores left idle by one worker's single-threaded matmuls; on a GPU it is unmeasured (no device here).
set -euo pipefail
build=${1:-build}
requests=${2:-16}
concurrency=${3:-4}
src=$(cd "$(dirname "$0")/.." && pwd)
kvwire=$build/tools/kvwire
receiverd=$build/receiver/receiverd
work=$(mktemp -d /tmp/kw_bench_workers_XXXXXX)
pid=
trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
"$kvwire" gen-model --arch qwen3 --layers 4 --hidden 512 --heads 8 --kv-heads 4 --head-dim 64 --intermediate 1536 \
    --vocab 151936 --dtype bf16 --seed 7 --tokenizer "$src/models/tokenizers/qwen3" --out "$work/model" >/dev/null

run() { # run WORKERS: starts receiverd, sends the requests, stops it; prints "seconds" and writes ids to $work/ids.W
    local workers=$1 ready=$work/ready.$1
    "$receiverd" --http.port=0 --model.name=bench --model.path="$work/model" --compute.threads=1 \
        --compute.workers="$workers" --queue.max=64 --runtime.ready_file="$ready" --log.level=warn \
        2>"$work/log.$workers" &
    pid=$!
    for _ in $(seq 600); do [ -s "$ready" ] && break; sleep 0.1; done
    local port
    port=$(sed -n 's/^port=//p' "$ready")
    local t0 t1
    t0=$(date +%s.%N)
    seq "$requests" | xargs -P "$concurrency" -I{} sh -c \
        "curl -s -H 'Content-Type: application/json' -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Question {}: tell me about the number {}.\"}],\"max_tokens\":32,\"kvwire\":{\"mode\":\"receiver_only\"}}' http://127.0.0.1:$port/v1/chat/completions > $work/out.$workers.{}"
    t1=$(date +%s.%N)
    kill -TERM "$pid"
    wait "$pid" || true
    pid=
    for i in $(seq "$requests"); do
        LC_ALL=C sed -n 's/.*"completion_ids":\(\[[0-9,]*\]\).*/\1/p' "$work/out.$workers.$i"
        echo # the response has no final newline
    done >"$work/ids.$workers"
    echo "$t0 $t1" | awk '{printf "%.2f", $2 - $1}'
}

printf "receiverd, %d receiver_only requests of 32 tokens, %d in flight, compute.threads 1\n" "$requests" "$concurrency"
printf "%-8s %10s %12s\n" workers seconds requests/s
for w in 1 2; do
    s=$(run "$w")
    printf "%-8s %10s %12.2f\n" "$w" "$s" "$(echo "$requests $s" | awk '{print $1 / $2}')"
done
if [ "$(wc -l <"$work/ids.1")" -eq "$requests" ] && ! grep -qx '' "$work/ids.1" && cmp -s "$work/ids.1" "$work/ids.2"; then
    echo "answers: identical"
else
    echo "answers: DIFFER"
    exit 1
fi
