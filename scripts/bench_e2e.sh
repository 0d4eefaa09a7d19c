#!/usr/bin/env bash
# bench_e2e.sh [--preset tiny|qwen3-0.6b] [--runs N] [--max-tokens N] [--threads N]: the end-to-end stage breakdown of
# one request through the two daemons on loopback, per mode, with random models of the preset's shapes (a Qwen3
# receiver and a Qwen2 sharer made by `kvwire gen-model`, a fuser by `kvwire gen-fuser`; the real Qwen tokenizer).
# Each mode runs once to warm up, then --runs times; the table gives the median of every timing receiverd reports
# (docs/HTTP_API.md §5.2, milliseconds) and the measured bytes, then the same request through `kvwire c2c` in one
# process for comparison. The load of the machine is printed before and after: on a shared machine read the ratios
# (stage / total, daemons / in-process), not the absolute times. Writes the models to out/bench-e2e/<preset>/ once.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=tiny runs=5 max_tokens=8 threads=1
while [ $# -gt 0 ]; do
    case $1 in
    --preset) preset=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "usage: $0 [--preset tiny|qwen3-0.6b] [--runs N] [--max-tokens N] [--threads N]" >&2; exit 2 ;;
    esac
done
kvwire=build/tools/kvwire
[ -x "$kvwire" ] && [ -x build/sharer/sharerd ] && [ -x build/receiver/receiverd ] || ./scripts/build.sh build
out=out/bench-e2e/$preset
mkdir -p "$out"
tok=models/tokenizers/qwen3
case $preset in
tiny) rp=tiny sp=tiny fuser_dims=(--hidden 64 --intermediate 64) ;;
qwen3-0.6b) rp=qwen3-0.6b sp=qwen2.5-0.5b fuser_dims=() ;;
*) echo "unknown preset $preset" >&2; exit 2 ;;
esac
[ -f "$out/receiver/config.json" ] || "$kvwire" gen-model --arch qwen3 --preset $rp --tied 0 --seed 1 --tokenizer $tok \
    --out "$out/receiver" >/dev/null
[ -f "$out/sharer/config.json" ] || "$kvwire" gen-model --arch qwen2 --preset $sp --tied 0 --seed 2 --tokenizer $tok \
    --out "$out/sharer" >/dev/null
[ -f "$out/fuser/config.json" ] || "$kvwire" gen-fuser --receiver "$out/receiver" --sharer "$out/sharer" \
    --out "$out/fuser" --seed 3 "${fuser_dims[@]}" >/dev/null

question="The following is a multiple choice question about astronomy. Which planet is known as the red planet \
because of the iron oxide on its surface? A. Venus B. Mars C. Jupiter D. Saturn. Answer with the letter of the \
correct choice and one sentence of explanation."

echo "machine: $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "models: receiver $rp (Qwen3), sharer $sp (Qwen2), random fuser; $threads compute thread(s) per daemon; \
max_tokens $max_tokens; median of $runs runs after one warm-up"

sharer_pid= receiver_pid=
stop() {
    for pid in $receiver_pid $sharer_pid; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap stop EXIT
rm -f "$out/sharerd.ready" "$out/receiverd.ready"
build/sharer/sharerd --listen.port 0 --models.0.name=sharer --models.0.path="$out/sharer" \
    --models.1.name=receiver --models.1.path="$out/receiver" --compute.threads "$threads" \
    --runtime.ready_file "$out/sharerd.ready" --log.level warn 2>"$out/sharerd.log" &
sharer_pid=$!
for _ in $(seq 3000); do [ -s "$out/sharerd.ready" ] && break; sleep 0.1; done
sport=$(sed 's/port=//' "$out/sharerd.ready")
build/receiver/receiverd --http.port 0 --model.name=receiver --model.path="$out/receiver" \
    --sharers.0.name=local --sharers.0.port "$sport" --fusers.0.name=fuser --fusers.0.path="$out/fuser" \
    --fusers.0.sharer_model=sharer --compute.threads "$threads" --sharer.request_timeout_ms 600000 \
    --runtime.ready_file "$out/receiverd.ready" --log.level warn 2>"$out/receiverd.log" &
receiver_pid=$!
for _ in $(seq 3000); do [ -s "$out/receiverd.ready" ] && break; sleep 0.1; done
port=$(sed 's/port=//' "$out/receiverd.ready")
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done

stages="tokenize sharer_queue sharer_prefill select encode transfer decode_from_wire project fuse receiver_prefill \
first_token decode total"
median() { sort -g | awk '{v[NR]=$1} END {if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'; }
printf "\n| mode | policy |"
for s in $stages; do printf " %s |" "$s"; done
printf " blob B | socket in B | out B |\n|---|---|"
for s in $stages; do printf -- "---:|"; done
printf -- "---:|---:|---:|\n"
request() { # mode policy-json
    curl -s "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d "{\"messages\": \
[{\"role\": \"user\", \"content\": \"$question\"}], \"max_tokens\": $max_tokens, \"kvwire\": {\"mode\": \"$1\", \
\"policy\": $2}}"
}
for entry in "receiver_only|{}" "c2c|{}" "c2c|{\"codec\": \"int4\", \"granularity\": \"head\"}" \
    "kv_direct|{\"codec\": \"int8\"}"; do
    mode=${entry%%|*} policy=${entry#*|}
    request "$mode" "$policy" >/dev/null
    : >"$out/runs.jsonl"
    for _ in $(seq "$runs"); do
        request "$mode" "$policy" | jq -ce 'if .kvwire then .kvwire else error("\(.error)") end' >>"$out/runs.jsonl"
    done
    [ -n "${prompt_tokens:-}" ] || prompt_tokens=$(head -1 "$out/runs.jsonl" | jq '.prompt_tokens')
    printf "| %s | %s |" "$mode" "$(echo "$policy" | tr -d '"{} ' | sed 's/,/ /g')"
    for s in $stages; do printf " %.2f |" "$(jq ".timings_ms.$s" "$out/runs.jsonl" | median)"; done
    printf " %s | %s | %s |\n" "$(jq '.bytes.blob' "$out/runs.jsonl" | median)" \
        "$(jq '.bytes.socket_in' "$out/runs.jsonl" | median)" "$(jq '.bytes.socket_out' "$out/runs.jsonl" | median)"
done
stop
trap - EXIT
echo "prompt: $prompt_tokens tokens (chat template included); the sharer gets the first $((prompt_tokens - 1))"

echo
echo "in one process (kvwire c2c, the same request and policy; its own stage names):"
for entry in "c2c|--wire bf16" "c2c|--wire int4 --wire-gran head" "kv_direct|--wire int8"; do
    mode=${entry%%|*} wire=${entry#*|}
    pair=""
    [ "$mode" = c2c ] && pair="--sharer $out/sharer --fuser $out/fuser"
    totals=""
    for _ in $(seq "$runs"); do
        start=$(date +%s%N)
        # shellcheck disable=SC2086
        line=$("$kvwire" c2c --receiver "$out/receiver" $pair --mode "$mode" --prompt "$question" \
            --max-new-tokens "$max_tokens" --threads "$threads" $wire | grep '^timing_ms:')
        totals="$totals $(( ($(date +%s%N) - start) / 1000000 ))"
    done
    echo "  $mode $wire: $line; process wall time median $(echo "$totals" | tr ' ' '\n' | grep . | median) ms (models loaded each run)"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
