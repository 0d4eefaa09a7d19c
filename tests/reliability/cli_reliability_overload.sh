#!/usr/bin/env bash
# cli_reliability_overload.sh: the pair (receiverd with queue.max 1: the request computing, none waiting) under
# open-loop arrivals at three times its measured capacity (kvload, Poisson). Every request is accounted for, each
# either answered or turned away with a fast 503 (KW_E_SHARE_BUSY) that carries Retry-After (its p99 under the
# accepted requests' median); the p99 latency of the accepted requests stays within twice its unloaded value (the
# target, enforced with KW_RELIABILITY_STRICT=1 on a quiet machine; a CI run, sharing its cores with other builds,
# enforces four times, which unbounded queueing would exceed many times over); receiverd's memory flattens (no growth over the second
# half) and its open descriptors come back to where they were. Then SIGTERM to receiverd under the same load: it exits
# 0, and every request either got its answer or a 503, or found the port closed: none is cut off without a response.
# Prints the figures (docs/RELIABILITY.md).
. "$(dirname "$0")/../cli_lib.sh" "$@"
. "$src/tests/reliability/pair_lib.sh"
start_pair --queue.max=1

# load NAME OPTIONS...: a kvload run of c2c requests of 8 tokens
load() {
    local name=$1
    shift
    (cd "$src" && "$kvload" run --url "$base" --dataset-name openbookqa --dataset-path loadgen/samples/openbookqa.jsonl \
        --max-tokens 8 --kvwire '{"mode":"c2c"}' --progress never --out "$tmp/$name" "$@") >"$name.log" 2>&1
}
# pct Q FILTER: the Q-quantile (0..1) of e2el_ms over the records of run $run that FILTER selects
pct() { jq -s "[.[] | select($2) | .e2el_ms] | sort | if length == 0 then 0 else .[(length * $1 | floor)] end" \
    "$run/records.jsonl"; }
fds() { find "/proc/$receiver_pid/fd" -mindepth 1 -maxdepth 1 | wc -l; }

# 1. unloaded: one request at a time
load unloaded --num-prompts 40 --num-warmups 4 || { cat unloaded.log; fail "the unloaded run failed"; }
run=$tmp/unloaded
p99_unloaded=$(pct 0.99 .success)
mean_unloaded=$(jq -s '[.[] | .e2el_ms] | add / length' "$run/records.jsonl")
[ "$(jq -s '[.[] | select(.success)] | length' "$run/records.jsonl")" = 40 ] || fail "an unloaded request failed"
rate=$(jq -n "3000 / $mean_unloaded | floor")
n=$((rate * 4 > 300 ? rate * 4 : 300))
fds_before=$(fds)

# 2. three times the capacity, open loop, for about four seconds; RSS sampled every 0.2 s; a probe for Retry-After
(while kill -0 "$receiver_pid" 2>/dev/null; do
    awk '/^VmRSS:/ {print $2}' "/proc/$receiver_pid/status" 2>/dev/null
    sleep 0.2
done) >rss.txt &
sampler=$!
load overload --num-prompts "$n" --request-rate "$rate" --max-concurrency 0 &
loader=$!
sleep 1
retry_after=
for _ in $(seq 200); do
    code=$(curl -s -D probe.h -o probe.json -w '%{http_code}' -H 'Content-Type: application/json' \
        -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":8}' "$base/v1/chat/completions")
    if [ "$code" = 503 ]; then
        retry_after=$(sed -n 's/^Retry-After: *\([0-9]*\).*/\1/ip' probe.h)
        break
    fi
done
wait $loader || { cat overload.log; fail "the overload run failed"; }
kill $sampler
run=$tmp/overload
[ "$(wc -l <"$run/records.jsonl")" = "$n" ] || fail "$(wc -l <"$run/records.jsonl") of $n requests recorded"
others=$(jq -r 'select(.success | not) | .error.kind' "$run/records.jsonl" | grep -vx 'http_503:KW_E_SHARE_BUSY' |
    sort | uniq -c || true)
[ -z "$others" ] || fail "failures other than a 503 for a full queue: $others"
accepted=$(jq -s '[.[] | select(.success)] | length' "$run/records.jsonl")
rejected=$((n - accepted))
[ "$rejected" -ge $((n / 5)) ] || fail "only $rejected of $n turned away: the load was not an overload"
[ "$accepted" -ge $((n / 10)) ] || fail "only $accepted of $n accepted"
p99_accepted=$(pct 0.99 .success)
p50_accepted=$(pct 0.5 .success)
p99_rejected=$(pct 0.99 '.success | not')
bound=4
[ "${KW_RELIABILITY_STRICT:-0}" = 1 ] && bound=2
jq -n "$p99_accepted <= $bound * $p99_unloaded" | grep -qx true ||
    fail "accepted p99 $p99_accepted ms is over $bound times the unloaded $p99_unloaded ms"
jq -n "$p99_rejected < $p50_accepted" | grep -qx true ||
    fail "the 503s are slow: p99 $p99_rejected ms, the accepted requests' median $p50_accepted ms"
[ -n "$retry_after" ] || { cat probe.h; fail "no 503 with Retry-After during the overload"; }
[ "$retry_after" -ge 1 ] && [ "$retry_after" -le 60 ] || fail "Retry-After $retry_after is not 1..60"
samples=$(wc -l <rss.txt)
[ "$samples" -ge 6 ] || fail "only $samples RSS samples"
half=$((samples / 2))
first_max=$(head -n "$half" rss.txt | sort -n | tail -n 1)
second_max=$(tail -n +$((half + 1)) rss.txt | sort -n | tail -n 1)
[ "$second_max" -le $((first_max + first_max / 50 + 4096)) ] ||
    fail "receiverd's RSS grew over the second half: $first_max kB then $second_max kB"
sleep 0.5
fds_after=$(fds)
[ "$fds_after" = "$fds_before" ] || fail "receiverd had $fds_before descriptors open before and $fds_after after"
echo "overload: $n requests at $rate/s (3x the unloaded capacity, mean $(printf %.1f "$mean_unloaded") ms):" \
    "$accepted answered, $rejected turned away with 503 (p99 $(printf %.2f "$p99_rejected") ms, Retry-After" \
    "$retry_after s), none lost; accepted p99 $(printf %.1f "$p99_accepted") ms vs unloaded" \
    "$(printf %.1f "$p99_unloaded") ms ($(jq -n "$p99_accepted / $p99_unloaded * 100 | round")%); receiverd RSS max" \
    "$first_max kB (first half) / $second_max kB (second half); descriptors $fds_before before, $fds_after after"

# 3. SIGTERM under the same load, once receiverd has answered a few of its requests (kvload's start-up takes a
# while in a sanitizer build)
answered() { grep -c 'receiverd: request [0-9]* ok' receiver.log || true; }
before=$(answered)
load sigterm --num-prompts "$n" --request-rate "$rate" --max-concurrency 0 &
loader=$!
for _ in $(seq 600); do [ "$(answered)" -ge $((before + 5)) ] && break; sleep 0.1; done
[ "$(answered)" -ge $((before + 5)) ] || { cat sigterm.log; fail "the load before SIGTERM never got going"; }
kill -TERM "$receiver_pid"
wait "$receiver_pid" || fail "receiverd exited $? on SIGTERM under load"
wait $loader || true
run=$tmp/sigterm
[ "$(wc -l <"$run/records.jsonl")" = "$n" ] || fail "$(wc -l <"$run/records.jsonl") of $n requests recorded"
kinds=$(jq -r 'if .success then "ok" else .error.kind end' "$run/records.jsonl" | sort | uniq -c)
bad=$(grep -vE ' (ok|http_503:KW_E_SHARE_BUSY|http_503:KW_E_NET_SHUTDOWN|connect)$' <<<"$kinds" || true)
[ -z "$bad" ] || fail "requests cut off by the shutdown: $bad ($(jq -r 'select(.success | not) | .error |
    select(.kind | test("^(http_503|connect)") | not) | "\(.kind): \(.message)"' "$run/records.jsonl" | sort |
    uniq -c | head -n 5))"
grep -q ' ok$' <<<"$kinds" || fail "no request answered before the shutdown"
grep -q 'receiverd: stopped' receiver.log || fail "receiverd did not log its stop"
echo "sigterm under load: receiverd exited 0; outcomes: $(tr -s ' \n' ' ' <<<"$kinds")"
