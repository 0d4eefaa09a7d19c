#!/usr/bin/env bash
# cli_gen_certs.sh: `kvwire gen-certs` writes the six PEM files (private keys readable by the owner only) into a
# folder it creates, and refuses a malformed subjectAltName and a missing --out. (test_net_tls uses the same
# generator through the library and checks that the certificates work: server auth, mutual TLS, refusals.)
# Arguments: kvwire binary, source dir, build dir.
set -euo pipefail
kvwire=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

grep -q "wrote pki/site" <<<"$("$kvwire" gen-certs --out pki/site --san "DNS:sharer1.cluster,IP:10.0.0.5" --days 30)"
for f in ca.pem ca.key server.pem server.key client.pem client.key; do
    test -s "pki/site/$f"
done
for k in ca.key server.key client.key; do
    test "$(stat -c %a "pki/site/$k")" = 600
done
grep -q "BEGIN CERTIFICATE" pki/site/server.pem
grep -q "BEGIN PRIVATE KEY" pki/site/server.key
if "$kvwire" gen-certs --out bad --san "nonsense" 2>err.txt; then
    echo "a malformed --san was accepted" >&2
    exit 1
fi
grep -q "KW_E_NET_TLS" err.txt
if "$kvwire" gen-certs 2>/dev/null; then
    echo "gen-certs ran without --out" >&2
    exit 1
fi
echo "cli_gen_certs: ok"
