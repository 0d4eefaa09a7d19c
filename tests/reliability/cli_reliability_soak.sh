#!/usr/bin/env bash
# cli_reliability_soak.sh [PROXY] [REQUESTS]: the pair on the tiny models under a long mixed load: five kvload runs
# at once (c2c bf16, c2c int4 with a token selection, kv_direct int8, receiver_only, text_relay), each two requests in
# flight, REQUESTS in all (default 1000; the `slow` test sends 10,000). Both daemons' RSS is sampled every 0.5 s and
# must flatten (no growth over the second half beyond allocator noise); their open descriptors come back to where
# they were; every request is answered or failed with an error response (kvload records each); the median latency of
# each run's last tenth stays within twice its first tenth's. Prints the figures (docs/RELIABILITY.md).
. "$(dirname "$0")/../cli_lib.sh" "$@"
total=${5:-1000}
. "$src/tests/reliability/pair_lib.sh"
start_pair --queue.max=64
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }

# a warm-up, so that the samples start from a daemon that has served every mode once
names=(c2c-bf16 c2c-int4-topk direct-int8 receiver-only relay)
policies=('{"mode":"c2c","policy":{"codec":"bf16"}}'
    '{"mode":"c2c","policy":{"codec":"int4","granularity":"token","selection":"vnorm_topk","proportion":0.5}}'
    '{"mode":"kv_direct","policy":{"codec":"int8"}}' '{"mode":"receiver_only"}'
    '{"mode":"text_relay","relay":{"max_tokens":16,"max_bytes":256}}')
# load NAME KVWIRE N: a kvload run of N requests, two in flight, 8 tokens each
load() {
    (cd "$src" && "$kvload" run --url "$base" --dataset-name openbookqa --dataset-path loadgen/samples/openbookqa.jsonl \
        --max-tokens 8 --kvwire "$2" --max-concurrency 2 --num-prompts "$3" --progress never --out "$tmp/$1") \
        >"$1.log" 2>&1
}
for i in "${!names[@]}"; do
    load "warm-${names[$i]}" "${policies[$i]}" 4 || { cat "warm-${names[$i]}.log"; fail "warm-up ${names[$i]} failed"; }
done
sleep 0.5
fds_before="$(fds "$receiver_pid") $(fds "$sharer_pid")"

(while kill -0 "$receiver_pid" 2>/dev/null; do
    echo "$(rss "$receiver_pid") $(rss "$sharer_pid")"
    sleep 0.5
done) >rss.txt &
sampler=$!
per=$((total / ${#names[@]}))
loaders=()
t0=$(date +%s)
for i in "${!names[@]}"; do
    load "${names[$i]}" "${policies[$i]}" "$per" &
    loaders+=($!)
done
for i in "${!loaders[@]}"; do
    wait "${loaders[$i]}" || { cat "${names[$i]}.log"; fail "the ${names[$i]} run failed"; }
done
seconds=$(($(date +%s) - t0))
kill $sampler
sleep 0.5
fds_after="$(fds "$receiver_pid") $(fds "$sharer_pid")"

report=
for name in "${names[@]}"; do
    rec=$tmp/$name/records.jsonl
    [ "$(wc -l <"$rec")" = "$per" ] || fail "$name: $(wc -l <"$rec") of $per requests recorded"
    bad=$(jq -r 'select(.success | not) | select(.error.status | (. == null) or (. < 400)) | .error.kind' "$rec" |
        sort | uniq -c || true)
    [ -z "$bad" ] || fail "$name: requests without an error response: $bad"
    ok=$(jq -s '[.[] | select(.success)] | length' "$rec")
    tenth=$((per / 10))
    first=$(jq -s "[.[:$tenth][] | select(.success) | .e2el_ms] | sort | .[length / 2 | floor]" "$rec")
    last=$(jq -s "[.[-$tenth:][] | select(.success) | .e2el_ms] | sort | .[length / 2 | floor]" "$rec")
    jq -n "$last <= 2 * $first" | grep -qx true ||
        fail "$name: the median latency went from $first ms (first tenth) to $last ms (last tenth)"
    report+="$name $ok/$per ok, median $(printf %.1f "$first") -> $(printf %.1f "$last") ms; "
done
samples=$(wc -l <rss.txt)
[ "$samples" -ge 8 ] || fail "only $samples RSS samples"
half=$((samples / 2))
for col in 1 2; do
    who=receiverd
    [ $col = 2 ] && who=sharerd
    first_max=$(head -n "$half" rss.txt | awk -v c=$col '{print $c}' | sort -n | tail -n 1)
    second_max=$(tail -n +$((half + 1)) rss.txt | awk -v c=$col '{print $c}' | sort -n | tail -n 1)
    [ "$second_max" -le $((first_max + first_max / 50 + 4096)) ] ||
        fail "$who's RSS grew over the second half: max $first_max kB, then $second_max kB"
    report+="$who RSS max $first_max kB (first half) / $second_max kB (second half); "
done
[ "$fds_after" = "$fds_before" ] || fail "open descriptors (receiverd sharerd) $fds_before before, $fds_after after"
echo "soak: $total requests in $seconds s, five runs at once; ${report}descriptors $fds_before before and after"
