#!/usr/bin/env bash
# cli_kvload_daemons.sh: the integration test of kvload against the real daemons: tiny models made by kvwire, sharerd
# and receiverd on loopback (ephemeral ports), a small sweep (a bf16 reference, the same policy again, int4 with half
# the tokens, kv_direct int8, receiver_only, text relay), then for every point the summary checked against its
# records by kvload_check (accuracy = correct / graded, byte totals = sums, teacher-forced rate = forced.jsonl's),
# the quality of the reference's twin (full agreement), the report's CSV, SVG and HTML, and clean daemon exits.
# Skipped (77) while receiverd and sharerd are not built; KW_RECEIVERD / KW_SHARERD name other binaries.
# Arguments: kvwire binary, source dir, build dir, kvload binary, kvload_check binary.
. "$(dirname "$0")/../cli_lib.sh" "$@"
kvload=$4
check=$5
receiverd=${KW_RECEIVERD:-$build/receiver/receiverd}
sharerd=${KW_SHARERD:-$build/sharer/sharerd}
if [ ! -x "$receiverd" ] || [ ! -x "$sharerd" ]; then
    echo "receiverd/sharerd not built: skipped"
    exit 77
fi
pids=()
stop() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap 'stop; rm -rf "$tmp"' EXIT

tok=$src/models/tokenizers/qwen3
"$kvwire" gen-model --arch qwen3 --preset tiny --tied 0 --seed 1 --tokenizer "$tok" --out m/tiny-qwen3 >/dev/null
"$kvwire" gen-model --arch qwen2 --preset tiny --tied 0 --seed 2 --tokenizer "$tok" --out m/tiny-qwen2 >/dev/null
"$kvwire" gen-fuser --receiver m/tiny-qwen3 --sharer m/tiny-qwen2 --out m/tiny-fuser --seed 3 --hidden 64 \
    --intermediate 64 >/dev/null
cat >sharerd.yaml <<YAML
listen: {host: 127.0.0.1, port: 0}
models:
  - {name: tiny-qwen2, path: m/tiny-qwen2}
  - {name: tiny-qwen3, path: m/tiny-qwen3}
compute: {threads: 1}
YAML
cat >receiverd.yaml <<YAML
http: {host: 127.0.0.1, port: 0}
model: {name: tiny-qwen3, path: m/tiny-qwen3}
compute: {threads: 1}
sharers:
  - {name: local, host: 127.0.0.1, port: 1}
fusers:
  - {name: tiny-fuser, path: m/tiny-fuser, sharer: local, sharer_model: tiny-qwen2}
YAML
ready_port() { # FILE NAME LOG: the port= line of a ready file
    for _ in $(seq 600); do
        if [ -s "$1" ]; then sed 's/port=//' "$1"; return 0; fi
        sleep 0.1
    done
    fail "$2 did not start: $(tail -5 "$3")"
}
"$sharerd" --config sharerd.yaml --runtime.ready_file s.ready 2>sharerd.log &
pids+=($!)
sport=$(ready_port s.ready sharerd sharerd.log)
"$receiverd" --config receiverd.yaml --sharers.0.port "$sport" --runtime.ready_file r.ready 2>receiverd.log &
pids+=($!)
rport=$(ready_port r.ready receiverd receiverd.log)
url=http://127.0.0.1:$rport
# Requests sent before receiverd's link to sharerd is up get 503 (a slow sanitizer build under load can take a while):
# the sweep starts once /health says every sharer is connected.
for _ in $(seq 600); do
    curl -s "$url/health" | jq -e '.status == "ok"' >/dev/null && break
    sleep 0.1
done
curl -s "$url/health" | jq -e '.status == "ok"' >/dev/null || fail "receiverd not healthy: $(curl -s "$url/health")"

cat >sweep.yaml <<YAML
run:
  dataset_name: openbookqa
  dataset_path: $src/loadgen/samples/openbookqa.jsonl
  limit: 4
  max_tokens: 6
  max_concurrency: 2
  progress: never
  bootstrap_resamples: 500
reference: full
points:
  - {name: full, kvwire: {mode: c2c, policy: {codec: bf16}}}
  - {name: full-again, kvwire: {mode: c2c, policy: {codec: bf16}}, run: {max_concurrency: 1}}
  - {name: alone, kvwire: {mode: receiver_only}}
  - {name: relay, kvwire: {mode: text_relay, relay: {max_tokens: 16, max_bytes: 64}}}
  - {name: direct-int8, kvwire: {mode: kv_direct, policy: {codec: int8}}}
grids:
  - name: int4
    kvwire: {mode: c2c, policy: {codec: int4, granularity: head, selection: knorm_topk}}
    axes: {policy.proportion: [0.5]}
YAML
"$kvload" sweep sweep.yaml --out sw --url "$url" >sweep.out 2>&1 || fail "sweep: $(tail -20 sweep.out)"
"$check" sw/full sw/full-again sw/alone sw/relay sw/direct-int8 sw/int4_proportion-0.5 >check.out ||
    fail "$(cat check.out)"
cat check.out
grep -q "ok sw/full: 4 records, 0 failed, 4 graded, 4 with token ids" check.out || fail "the reference: $(cat check.out)"
# The reference's twin agrees with it everywhere: the daemons are deterministic and so is kvload's plumbing.
for m in answer_agreement token_agreement tf_top1_agreement; do
    tr -d ' \n\t' <sw/full-again/summary.json | grep -q "\"$m\":{\"value\":1," || fail "full-again: $m is not 1"
done
# receiverd writes logprobs tokens as ids when asked (return_tokens_as_token_ids), so the KL is measured: exactly 0
# for the twin, a number for a lossy policy.
tr -d ' \n\t' <sw/full-again/summary.json | grep -q '"mean_kl":{"value":0,' || fail "full-again: mean_kl is not 0"
tr -d ' \n\t' <sw/direct-int8/summary.json | grep -q '"mean_kl":{"value":[0-9]' || fail "direct-int8: no mean_kl"
tr -d ' \n\t' <sw/alone/summary.json | grep -q '"bytes":{"blob":{"total":0,' || fail "receiver_only sent bytes"
tr -d ' \n\t' <sw/full/summary.json | grep -q '"bytes":{"blob":{"total":[1-9]' || fail "c2c sent no blob"

"$kvload" report sw --out rep >/dev/null
[ "$(wc -l <rep/report.csv)" -eq 7 ] || fail "report.csv rows: $(wc -l <rep/report.csv)"
for f in quality_vs_bytes.svg latency_stages.svg; do
    head -c 4 "rep/$f" | grep -q "<svg" || fail "$f"
done
grep -q 'data-points="6"' rep/index.html || fail "the plot does not show the 6 runs"
# the regime map starts at 0 bytes with receiver_only (the only run that sends nothing) and ends open; every family
# has a row per level in budgets.csv (the twin of the reference reaches both: its agreement is 1)
[ "$(sed -n 2p rep/regime.csv | cut -d, -f1,4)" = "0,alone" ] || fail "regime.csv: $(cat rep/regime.csv)"
tail -n 1 rep/regime.csv | grep -q '^[0-9.]*,inf,' || fail "regime.csv does not end open: $(cat rep/regime.csv)"
[ "$(grep -c ',accuracy,0.9[59],' rep/budgets.csv)" = 10 ] || fail "budgets.csv: $(cat rep/budgets.csv)"
"$kvload" report sw --out rep-tf --metric tf_top1_agreement >/dev/null
grep -q '^c2c full bf16,tf_top1_agreement,0.99,yes,[0-9.]*,full-again,1$' rep-tf/budgets.csv ||
    fail "budgets.csv by teacher-forced agreement: $(cat rep-tf/budgets.csv)"
grep -q 'id="regime"' rep/index.html || fail "index.html has no regime table"

# kvload sensitivity (kv_direct, tiny-qwen3's 2 layers x int8, int4): every one-layer point measured, a schedule for
# 60% of the reference's bytes chosen and run; its measured bytes per request equal the predicted ones (KVWire
# sections are independent) and meet the target; the written policy is what the schedule point sent.
sens_run=(--url "$url" --dataset-name openbookqa --dataset-path "$src/loadgen/samples/openbookqa.jsonl" --limit 4
    --max-tokens 6 --max-concurrency 2 --progress never --bootstrap-resamples 200)
"$kvload" sensitivity --out sens --mode kv_direct --codecs int8,int4 --target-fraction 0.6 "${sens_run[@]}" \
    >sens.out 2>&1 || fail "sensitivity: $(tail -20 sens.out)"
sched=schedule-$(jq .target_bytes_per_request sens/sensitivity.json)
for p in reference layer-0_int8 layer-0_int4 layer-1_int8 layer-1_int4 "$sched"; do
    [ -s "sens/$p/summary.json" ] || fail "sensitivity: no point $p"
done
j=sens/sensitivity.json
[ "$(jq '.table | length' $j)" = 4 ] || fail "sensitivity: table rows: $(jq .table $j)"
jq -e '.target_bytes_per_request == ((.reference_bytes_per_request * 0.6) | floor)' $j >/dev/null ||
    fail "sensitivity: the target is not 60% of the reference"
jq -e '.measured.bytes_per_request == .predicted.bytes_per_request' $j >/dev/null ||
    fail "sensitivity: measured bytes differ from predicted: $(jq -c '.measured, .predicted' $j)"
jq -e '.measured.bytes_per_request <= .target_bytes_per_request' $j >/dev/null ||
    fail "sensitivity: the schedule misses the target: $(jq -c . $j)"
jq -e 'all(.table[]; .delta_bytes < 0 and .mean_kl >= 0 and .tf_top1_agreement >= 0 and .tf_top1_agreement <= 1)' \
    $j >/dev/null || fail "sensitivity: a bad table row: $(jq -c .table $j)"
[ "$(head -n 1 "sens/$sched/records.jsonl" | jq -c '[.kvwire.policy.schedule[].codec]')" = \
    "$(jq -c '[.schedule[].codec]' sens/schedule.json)" ] || fail "sensitivity: the schedule point sent another policy"
grep -q "^measured: " sens.out || fail "sensitivity printed no measured line"
# a target no schedule can reach: exit 1 naming the smallest
if "$kvload" sensitivity --out sens --mode kv_direct --codecs int8,int4 --target-bytes 10 "${sens_run[@]}" \
    >sens2.out 2>&1; then fail "an unreachable target succeeded"; fi
grep -q "the smallest schedule saves" sens2.out || fail "unreachable target: $(tail -3 sens2.out)"

# SIGTERM: both daemons exit cleanly (status 0, nothing from a sanitizer).
for p in "${pids[@]}"; do kill -TERM "$p"; done
for p in "${pids[@]}"; do wait "$p" || fail "a daemon exited with status $?: $(tail -n 3 receiverd.log sharerd.log)"; done
pids=()
! grep -q "Sanitizer\|runtime error" sharerd.log receiverd.log || fail "sanitizer reports in the daemons' logs"
if [ -n "${KW_KEEP_DIR:-}" ]; then rm -rf "$KW_KEEP_DIR" && cp -r "$tmp" "$KW_KEEP_DIR"; fi
echo ok
