#!/usr/bin/env bash
# cli_kvload.sh: the kvload command line against its stub receiverd (a separate process, loopback): run, summarize,
# sweep --dry-run, report, usage errors (status 2); SIGINT during a run (status 130, the records kept, the summary
# marked incomplete); a sweep killed with SIGKILL after two points and run again: the finished points are not redone
# (same files, same inodes), the others complete.
# Arguments: kvwire binary, source dir, build dir, kvload binary.
. "$(dirname "$0")/../cli_lib.sh" "$@"
kvload=$4
samples=$src/loadgen/samples
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# start_stub NAME [stub options...]: a stub in the background; its URL in $url.
start_stub() {
    local name=$1
    shift
    "$kvload" stub --port-file "$name.port" "$@" 2>"$name.log" &
    pids+=($!)
    for _ in $(seq 1 100); do [ -s "$name.port" ] && break; sleep 0.05; done
    [ -s "$name.port" ] || fail "the stub did not start: $(cat "$name.log")"
    url=http://127.0.0.1:$(cat "$name.port")
}

# wait_for FILE: until it exists (10 s at most).
wait_for() {
    for _ in $(seq 1 200); do [ -e "$1" ] && return 0; sleep 0.05; done
    fail "$1 never appeared"
}

start_stub fast
fast=$url

# A run: the human-readable block on stdout, the run folder on disk.
"$kvload" run --url "$fast" --dataset-name mmlu-redux --dataset-path "$samples/mmlu_redux.jsonl" --out r1 \
    --max-tokens 12 --max-concurrency 3 --progress never >run.out
grep -q "Successful requests: *12" run.out || fail "12 graded items expected: $(cat run.out)"
grep -q "^Accuracy:" run.out || fail "no accuracy line"
for f in run.json records.jsonl summary.json; do [ -s "r1/$f" ] || fail "r1/$f missing"; done
[ "$(wc -l <r1/records.jsonl)" -eq 12 ] || fail "12 records expected"
grep -q '"mmlu-redux error_type expert":' r1/run.json || fail "skip reasons not recorded"
# summarize recomputes the same figures.
cp r1/summary.json before.json
"$kvload" summarize r1 >/dev/null
grep -v written_at before.json >a.json
grep -v written_at r1/summary.json >b.json
cmp -s a.json b.json || fail "summarize changed the summary"

# Progress as plain lines when forced on a non-terminal.
"$kvload" run --url "$fast" --dataset-path "$samples/prompts.jsonl" --out r2 --progress always --num-prompts 20 \
    >r2.out 2>&1
grep -q "measured" r2.out || fail "no progress bar"

# Usage errors: status 2 and a reason.
set +e
"$kvload" run --url "$fast" --dataset-path "$samples/prompts.jsonl" --out r3 --max-concurency 2 2>err1; rc1=$?
"$kvload" run --url "$fast" --dataset-path "$samples/prompts.jsonl" --out r3 --request-rate -1 2>err2; rc2=$?
"$kvload" frobnicate 2>/dev/null; rc3=$?
"$kvload" run --url "$fast" --dataset-path "$samples/missing.jsonl" --out r3 2>err4; rc4=$?
set -e
[ "$rc1" -eq 2 ] && grep -q "unknown option" err1 || fail "misspelt option: $rc1 $(cat err1)"
[ "$rc2" -eq 2 ] && grep -q "request_rate" err2 || fail "bad rate: $rc2 $(cat err2)"
[ "$rc3" -eq 2 ] || fail "unknown command: $rc3"
[ "$rc4" -eq 1 ] && grep -q "missing.jsonl" err4 || fail "missing dataset: $rc4 $(cat err4)"
"$kvload" run --help | grep -q -- "--max-concurrency" || fail "run --help"

# SIGINT during a run: what was answered is kept, the summary says incomplete, status 130.
start_stub slow --token-ms 40
slow=$url
"$kvload" run --url "$slow" --dataset-name openbookqa --dataset-path "$samples/openbookqa.jsonl" --out int \
    --max-tokens 8 --progress never >int.out 2>&1 &
runpid=$!
pids+=($runpid)
for _ in $(seq 1 200); do [ -s int/records.jsonl ] && break; sleep 0.05; done
kill -INT "$runpid"
set +e
wait "$runpid"
rc=$?
set -e
[ "$rc" -eq 130 ] || fail "interrupted run: status $rc, $(cat int.out)"
grep -q '"complete":[[:space:]]*false' int/summary.json || fail "summary not marked incomplete"
n=$(wc -l <int/records.jsonl)
[ "$n" -ge 1 ] && [ "$n" -lt 12 ] || fail "$n records after an interruption"

# A sweep killed (SIGKILL) after two points, then resumed.
cat >sweep.yaml <<YAML
run:
  dataset_name: openbookqa
  dataset_path: $samples/openbookqa.jsonl
  max_tokens: 6
  progress: never
reference: full
points:
  - name: full
    kvwire: {mode: c2c}
  - name: alone
    kvwire: {mode: receiver_only}
grids:
  - name: q
    kvwire: {mode: c2c}
    axes:
      policy.codec: [int8, int4]
YAML
"$kvload" sweep sweep.yaml --out sw --dry-run >dry.out
# every shipped sweep file expands (names, families, axes, kvwire objects) without running anything
for f in "$src"/loadgen/sweeps/*.yaml; do
    (cd "$src" && "$kvload" sweep "$f" --out "$tmp/shipped-$(basename "$f" .yaml)" --dry-run) >shipped.out 2>&1 ||
        fail "$f does not expand: $(tail -3 shipped.out)"
    grep -q "^to run" shipped.out || fail "$f: no point to run"
done
[ "$(grep -c "^to run" dry.out)" -eq 4 ] || fail "dry run: $(cat dry.out)"
"$kvload" sweep sweep.yaml --out sw --url "$slow" >sweep1.out 2>&1 &
sweeppid=$!
pids+=($sweeppid)
wait_for sw/alone/summary.json
kill -KILL "$sweeppid"
wait "$sweeppid" 2>/dev/null || true
before_full=$(stat -c '%i %Y %s' sw/full/summary.json sw/full/records.jsonl sw/full/forced.jsonl 2>/dev/null || true)
before_alone=$(stat -c '%i %Y %s' sw/alone/summary.json sw/alone/records.jsonl)
sleep 1.1 # a rewrite would change the mtime (seconds)
"$kvload" sweep sweep.yaml --out sw --url "$fast" >sweep2.out 2>&1 || fail "resume: $(cat sweep2.out)"
grep -q "point 1/4 full: done, skipped" sweep2.out || fail "the reference was redone: $(cat sweep2.out)"
grep -q "point 2/4 alone: done, skipped" sweep2.out || fail "a finished point was redone"
[ "$before_full" = "$(stat -c '%i %Y %s' sw/full/summary.json sw/full/records.jsonl sw/full/forced.jsonl 2>/dev/null || true)" ] ||
    fail "the reference's files changed"
[ "$before_alone" = "$(stat -c '%i %Y %s' sw/alone/summary.json sw/alone/records.jsonl)" ] || fail "a point's files changed"
for p in full alone q_codec-int8 q_codec-int4; do
    grep -q '"complete":[[:space:]]*true' "sw/$p/summary.json" || fail "$p incomplete"
    [ "$(wc -l <"sw/$p/records.jsonl")" -eq 12 ] || fail "$p: $(wc -l <"sw/$p/records.jsonl") records"
done
[ "$(grep -c '"state":[[:space:]]*"done"' sw/sweep.json)" -eq 4 ] || fail "sweep.json: $(cat sw/sweep.json)"
"$kvload" sweep sweep.yaml --out sw --dry-run | grep -c "^done" | grep -q 4 || fail "dry run after the sweep"

# The report: CSV rows, SVG plots, the HTML page.
"$kvload" report sw --out rep >rep.out
[ "$(wc -l <rep/report.csv)" -eq 5 ] || fail "report.csv: $(wc -l <rep/report.csv) lines"
head -1 rep/report.csv | grep -q "^name,family,mode" || fail "CSV header"
grep -q "^alone,receiver_only,receiver_only," rep/report.csv || fail "CSV row"
for f in quality_vs_bytes.svg latency_stages.svg; do
    head -c 4 "rep/$f" | grep -q "<svg" || fail "$f is not SVG"
    tail -1 "rep/$f" | grep -q "</svg>" || fail "$f is cut"
done
grep -q 'data-points="4"' rep/index.html || fail "the quality plot should show 4 runs: $(grep -o 'data-points="[0-9]*"' rep/index.html)"
set +e
"$kvload" report "$tmp/nothing-here" --out rep2 2>err5; rc5=$?
set -e
[ "$rc5" -eq 1 ] || fail "report of nothing: $rc5"
echo ok
