#!/usr/bin/env bash
# cli_bench_net.sh: `kvwire bench net` runs end to end on small sizes (the numbers are not checked, only that every
# variant moved all its bytes and the protocol exchange completed: a share whose blob the receiver decoded, one round
# trip, the framing bytes PROTOCOL.md predicts). Arguments: kvwire binary, source dir, build dir.
set -euo pipefail
kvwire=$1
out=$("$kvwire" bench net --mib 2 --reps 1 --tokens 16 --layers 3 --prompt 8)
echo "$out"
for row in "raw TCP" "net/ bytes" "proto/ frames over net/" "proto/ frames over TLS" "AES-128-GCM alone" \
    "OpenSSL TLS without a socket"; do
    grep -q "$row" <<<"$out" || { echo "missing: $row" >&2; exit 1; }
done
# 3 sections + blob header + trailer: 5 WIRE frames of 5 header bytes
grep -q "framing: 25 bytes of WIRE headers" <<<"$out"
echo "$out" | awk '$1 == "TCP" || $1 == "TLS" { if ($NF != 1) exit 1; n++ } END { exit n == 2 ? 0 : 1 }'
# (here-strings, not pipes into grep -q: with pipefail, grep -q quitting at its first match fails the writer)
out=$("$kvwire" bench net --section-bytes 4096 --mib 1 --reps 1 --throughput-only --only "over net/")
grep -q "4096 bytes" <<<"$out"
