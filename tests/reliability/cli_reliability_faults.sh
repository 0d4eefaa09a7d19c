#!/usr/bin/env bash
# cli_reliability_faults.sh: sharerd and receiverd with kw_fault_proxy between them (tests/reliability), under a load
# of two clients sending c2c requests back to back, through one fault after another: the sharer's stream stalled,
# reset, with flipped bits, truncated, the sharer gone (connections refused), sharerd restarted, and receiverd
# restarted. For each: every request is answered (no client gives up without a response; while receiverd restarts,
# a connection it refuses is an answer the client sees at once), every answer is either the fault-free answer to its
# prompt, to the byte, or an HTTP error with an error body (nothing corrupted is ever fused into an answer: the
# message checksums and KVWire's refuse it, which sharerd's log shows for the flipped requests), the time
# from the fault's end to the first good answer is measured, and the requests after it all succeed. Prints one line
# per fault with the counts and the recovery time (docs/RELIABILITY.md).
. "$(dirname "$0")/../cli_lib.sh" "$@"
proxy_bin=$4
models=$build/tests/daemons/models
[ -d "$models/tiny-qwen3" ] || fail "no tiny models in $models (the test_daemons_models fixture makes them)"
. "$src/tests/deploy/daemon_lib.sh"

start sharer "$build/sharer/sharerd" --config "$src/deploy/config/sharerd.tiny.yaml" --listen.port=0 \
    --models.0.path="$models/tiny-qwen2" --models.1.path="$models/tiny-qwen3" --compute.threads=1
sharer_pid=${pids[-1]} sharer_port=$port

# the proxy, commanded through a FIFO; proxy_do COMMAND waits for its "ok COMMAND"
mkfifo proxy.ctl
"$proxy_bin" proxy.port 127.0.0.1 "$sharer_port" <proxy.ctl >proxy.out 2>&1 &
pids+=($!)
exec 3>proxy.ctl
for _ in $(seq 100); do [ -s proxy.port ] && break; sleep 0.05; done
proxy_port=$(sed -n "s/^port=//p" proxy.port 2>/dev/null || true)
[ -n "$proxy_port" ] || fail "kw_fault_proxy did not start: $(cat proxy.out)"
proxy_do() {
    local before
    before=$(grep -c "^ok $*\$" proxy.out || true)
    echo "$*" >&3
    for _ in $(seq 100); do
        [ "$(grep -c "^ok $*\$" proxy.out || true)" -gt "$before" ] && return
        sleep 0.02
    done
    fail "kw_fault_proxy did not take '$*': $(tail -n 3 proxy.out)"
}

receiver_args=(--config "$src/deploy/config/receiverd.tiny.yaml" --model.path="$models/tiny-qwen3"
    --fusers.0.path="$models/tiny-fuser" --sharers.0.port="$proxy_port" --compute.threads=1
    --sharer.request_timeout_ms=2000 --sharer.reconnect_ms=100)
start receiver "$build/receiver/receiverd" "${receiver_args[@]}" --http.port=0
receiver_pid=${pids[-1]} receiver_port=$port
url=http://127.0.0.1:$receiver_port/v1/chat/completions
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$receiver_port/health" | jq -e '.status == "ok"' >/dev/null 2>&1 && break
    sleep 0.1
done

prompts=("Name a red planet." "What is two plus two?" "Say hello in French." "Which is heavier, iron or air?")
. "$src/tests/reliability/requests_lib.sh"
reference_answers

# fault NAME HOLD_S INJECT... : two clients sending back to back (at least 12 requests each, and on until the fault
# has ended); after 0.3 s INJECT (a command for the proxy, or a shell function), held HOLD_S seconds, then `pass`.
# The recovery time is from the fault's end to the end of the first good answer to a request sent after it (the
# clients', or probes' when theirs were done)
fault() {
    local name=$1 hold=$2
    shift 2
    rm -f stop
    client 0 12 stop &
    local c0=$!
    client 1 12 stop &
    local c1=$!
    sleep 0.3
    # a fault held 0 s is an instant: on a loaded machine both clients can be between requests then (their jq and
    # curl start-up), so it is injected again, up to three times, until a request was under way during it
    local injected cleared attempt
    for attempt in 1 2 3; do
        injected=$(now_ms)
        if [ "$(type -t "$1")" = function ]; then "$@"; else proxy_do "$@"; fi
        sleep "$hold"
        proxy_do pass
        cleared=$(now_ms)
        underway "$injected" "$cleared" && break
        echo "fault $name: no request under way during injection $attempt"
        sleep 0.2
    done
    touch stop
    wait $c0 || fail "$name: a client failed"
    wait $c1 || fail "$name: a client failed"
    recover "$name" "$cleared" 200
    outcomes "$name" "$injected" "$cleared"
    echo "fault $name: $total/$total answered: $ok identical to the fault-free answers, errors: ${errors:-none};" \
        "recovered $recovery_ms ms after the fault ended; 4/4 good after"
}

# restart_receiver: receiverd stopped (SIGTERM: the requests in flight finish or fail with an answer) and started
# again on its port; meanwhile new connections are refused, which the clients see (allow_refused)
restart_receiver() {
    stop "$receiver_pid"
    start receiver "$build/receiver/receiverd" "${receiver_args[@]}" --http.port="$receiver_port"
    receiver_pid=${pids[-1]}
}

# restart_sharer: sharerd stopped (SIGTERM) and started again on its port
restart_sharer() {
    stop "$sharer_pid"
    start sharer "$build/sharer/sharerd" --config "$src/deploy/config/sharerd.tiny.yaml" --listen.port="$sharer_port" \
        --models.0.path="$models/tiny-qwen2" --models.1.path="$models/tiny-qwen3" --compute.threads=1
    sharer_pid=${pids[-1]}
}

fault stall 3 stall
fault reset 0 reset
fault flip 2 flip 101
# one flipped bit in a request is caught by the message checksum (PROTOCOL.md §3.1), not by luck in the parser. Which
# bytes a period hits depends on how the requests fall on the connections; a flip in a frame's length can instead
# hold the request until its timeout and use up the fault's hold with no checksum seen (2 of ~25 runs did), so the
# fault is repeated with other periods, up to three rounds, until sharerd's log shows a checksum refusal
for period in 389 211 97; do
    fault "flipup-$period" 2 flipup "$period"
    grep -q 'KW_E_PROTO_CHECKSUM' sharer.log && break
    echo "flipup every $period bytes: no checksum refusal yet; sharerd's errors:" \
        "$(grep -o 'KW_E_[A-Z_]*' sharer.log | sort | uniq -c | tr -s ' \n' ' ')"
done
grep -q 'KW_E_PROTO_CHECKSUM' sharer.log || fail "sharerd refused no request for its checksum in three flipup rounds;" \
    "its errors: $(grep -o 'KW_E_[A-Z_]*' sharer.log | sort | uniq -c | tr -s ' \n' ' '); proxy: $(tail -n 3 proxy.out)"
fault truncate 2 truncate 3000
fault refuse 2 refuse
fault sharer-restart 0 restart_sharer
allow_refused=1 fault receiver-restart 0 restart_receiver
echo stats >&3
for _ in $(seq 100); do grep -q '^stats' proxy.out && break; sleep 0.02; done
flipped=$(sed -n 's/^stats .*flipped=\([0-9]*\).*/\1/p' proxy.out)
[ "${flipped:-0}" -gt 0 ] || fail "the proxy flipped no bit: the flip fault was not exercised ($(grep '^stats' proxy.out))"
echo "proxy: $(grep '^stats' proxy.out)"
