#!/usr/bin/env bash
# product_tf.sh [--chat] MODEL PROMPTS POLICIES [ROW...]: starts sharerd and receiverd on MODEL (fp32 numerics, one
# thread each, ephemeral loopback ports), turns PROMPTS (one a line) into prompt ids exactly as `kvwire kvstats` does
# (`kvwire tokenize --bos`: BOS where the model's raw prompts have it; with --chat, `kvwire tokenize --chat`: each line
# as one user turn of the model's chat template, as kvstats --chat) and runs bench/product_tf.py with POLICIES (a JSON
# file: row name -> kvwire.policy; only the named ROWs if any are given); stops both daemons at the end. The layer
# count and K/V elements per row (for bits per element) are the ones kvstats reports for MODEL. KW_BUILD names the
# build directory (default build/).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${KW_BUILD:-build}
prompt_mode=--bos
if [ "${1:-}" = --chat ]; then prompt_mode=--chat; shift; fi
model=$1 prompts=$2 policies=$3
shift 3
tmp=$(mktemp -d)
spid='' rpid=''
trap 'kill $spid $rpid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
# The model's shape from kvstats' header line: "(ARCH, L layers, H KV heads x D)", one prompt, one token.
grep -m1 . "$prompts" >"$tmp/p1"
shape=$("$build"/tools/kvwire kvstats --model "$model" --prompts "$tmp/p1" --max-new-tokens 1 --codec none --no-heads \
    --threads 1 2>/dev/null |
    sed -n 's/^kvstats: .*, \([0-9]*\) layers, \([0-9]*\) KV heads x \([0-9]*\)).*/\1 \2 \3/p')
read -r layers kv_heads head_dim <<<"$shape"
[ -n "${head_dim:-}" ] || { echo "product_tf.sh: no model shape from kvwire kvstats" >&2; exit 1; }
"$build"/sharer/sharerd --models.0.name=m --models.0.path="$model" --listen.host=127.0.0.1 --listen.port=0 \
    --runtime.ready_file="$tmp/s" --compute.threads=1 >"$tmp/s.log" 2>&1 &
spid=$!
for _ in $(seq 600); do [ -s "$tmp/s" ] && break; sleep 0.1; done
"$build"/receiver/receiverd --model.name=m --model.path="$model" --sharers.0.name=local --sharers.0.host=127.0.0.1 \
    --sharers.0.port="$(sed 's/port=//' "$tmp/s")" --http.host=127.0.0.1 --http.port=0 --runtime.ready_file="$tmp/r" \
    --numerics.mode=fp32 --compute.threads=1 >"$tmp/r.log" 2>&1 &
rpid=$!
for _ in $(seq 600); do [ -s "$tmp/r" ] && break; sleep 0.1; done
port=$(sed 's/port=//' "$tmp/r")
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/health" | grep -q '"connected":true' && break; sleep 0.1; done
python3 -c 'import json, sys
for line in open(sys.argv[1]):
    line = line.rstrip("\n").rstrip("\r")
    if line: print(json.dumps(line))' "$prompts" |
    "$build"/tools/kvwire tokenize --tokenizer "$model" "$prompt_mode" >"$tmp/ids"
KW_LAYERS=$layers KW_ROW_ELEMS=$((kv_heads * head_dim)) python3 bench/product_tf.py "$port" "$tmp/ids" "$policies" "$@"
