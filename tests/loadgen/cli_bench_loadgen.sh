#!/usr/bin/env bash
# cli_bench_loadgen.sh: `kvwire bench loadgen` runs end to end on a small count (the rates are not checked, only that
# every variant completed without a failed request and printed its row). Arguments: kvwire binary, source dir, build
# dir.
set -euo pipefail
kvwire=$1
out=$("$kvwire" bench loadgen --requests 300 --rounds 1 --concurrency 4 --rate 2000)
echo "$out"
for row in "bare libcurl multi (baseline)" "kvload closed, whole responses" "kvload closed, streamed (SSE)" \
    "kvload open loop at 2000 req/s"; do
    grep -qF -- "$row" <<<"$out" || { echo "missing: $row" >&2; exit 1; }
done
set +e
"$kvwire" bench loadgen --requests 5 >/dev/null 2>&1
rc=$?
set -e
[ "$rc" -eq 2 ] # below the minimum count: a usage error
echo ok
