#!/usr/bin/env bash
# product_tf.sh MODEL PROMPTS POLICIES: starts sharerd and receiverd on MODEL (fp32 numerics, one thread each, ephemeral
# loopback ports), tokenizes PROMPTS (one a line, BOS 2 first as kvstats adds it for Gemma 3) and runs
# bench/product_tf.py with POLICIES (a JSON file: row name -> kvwire.policy); stops both daemons at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1 prompts=$2 policies=$3
tmp=$(mktemp -d)
trap 'kill $spid $rpid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
build/sharer/sharerd --models.0.name=m --models.0.path="$model" --listen.host=127.0.0.1 --listen.port=0 \
    --runtime.ready_file="$tmp/s" --compute.threads=1 >"$tmp/s.log" 2>&1 &
spid=$!
for _ in $(seq 600); do [ -s "$tmp/s" ] && break; sleep 0.1; done
build/receiver/receiverd --model.name=m --model.path="$model" --sharers.0.name=local --sharers.0.host=127.0.0.1 \
    --sharers.0.port="$(sed 's/port=//' "$tmp/s")" --http.host=127.0.0.1 --http.port=0 --runtime.ready_file="$tmp/r" \
    --numerics.mode=fp32 --compute.threads=1 >"$tmp/r.log" 2>&1 &
rpid=$!
for _ in $(seq 600); do [ -s "$tmp/r" ] && break; sleep 0.1; done
port=$(sed 's/port=//' "$tmp/r")
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/health" | grep -q '"connected":true' && break; sleep 0.1; done
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    if line.strip(): print(json.dumps(line.rstrip("\n")))' "$prompts" |
    build/tools/kvwire tokenize --tokenizer "$model" | sed 's/^\[/[2,/' >"$tmp/ids"
python3 bench/product_tf.py "$port" "$tmp/ids" "$policies"
