#!/usr/bin/env bash
# make-certs.sh: a private PKI for mutual TLS between sharerd and receiverd, with the openssl command line only (for
# hosts without kvwire built, and for people who want to see every step): one CA, a server certificate for sharerd
# (with the names receiverd connects to in its subjectAltName) and a client certificate for receiverd. EC P-256 keys,
# SHA-256 signatures, the same files and extensions as `kvwire gen-certs`:
#   ca.pem ca.key server.pem server.key client.pem client.key   (keys mode 0600)
# deploy/config/sharerd.tls.yaml and receiverd.tls.yaml read them from the folder tls/ next to the config.
#
# usage: make-certs.sh --out DIR [--san LIST] [--days N] [--ca-name NAME]
#   --san   the server certificate's subjectAltName (default DNS:localhost,IP:127.0.0.1); add every name and
#           address receiverd uses for sharerd, e.g. DNS:localhost,IP:127.0.0.1,DNS:gpu07,IP:10.1.2.7
#   --days  validity (default 365)
# Existing files of those names in DIR are replaced. This is not a production CA: the CA key stays in DIR (move it
# somewhere safe, or delete it once the certificates are made).
set -euo pipefail
out= san=DNS:localhost,IP:127.0.0.1 days=365 ca_name="kvwire CA"
usage() { sed -n 's/^# \{0,1\}//; 9,12p' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
    case $1 in
    --out) out=${2:-}; shift 2 ;;
    --san) san=${2:-}; shift 2 ;;
    --days) days=${2:-}; shift 2 ;;
    --ca-name) ca_name=${2:-}; shift 2 ;;
    -h | --help) usage ;;
    *) echo "make-certs.sh: unknown argument $1" >&2; usage ;;
    esac
done
[ -n "$out" ] || { echo "make-certs.sh: --out DIR is required" >&2; usage; }
[[ $days =~ ^[1-9][0-9]{0,4}$ ]] || { echo "make-certs.sh: --days must be 1..99999" >&2; exit 2; }
[[ $san =~ ^(DNS|IP):[^,]+(,(DNS|IP):[^,]+)*$ ]] ||
    { echo "make-certs.sh: --san must be a list like DNS:host,IP:10.0.0.1" >&2; exit 2; }
if ! command -v openssl >/dev/null; then
    echo "make-certs.sh: openssl is not installed (apt-get install openssl)" >&2
    exit 1
fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077

# key NAME: an EC P-256 private key in $work/NAME.key
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/$1.key" 2>/dev/null; }

# the extensions of each certificate (what kw_net_pki.c gives them)
cat >"$work/ext.cnf" <<CNF
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = $san
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
CNF

key ca
openssl req -new -x509 -key "$work/ca.key" -sha256 -days "$days" -subj "/CN=$ca_name" \
    -config "$work/ext.cnf" -extensions ca -out "$work/ca.pem"
for who in server client; do
    key $who
    openssl req -new -key "$work/$who.key" -subj "/CN=kvwire $who" -out "$work/$who.csr"
    openssl x509 -req -in "$work/$who.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
        -set_serial "0x$(openssl rand -hex 8)" -sha256 -days "$days" -extfile "$work/ext.cnf" -extensions $who \
        -out "$work/$who.pem" 2>/dev/null
    openssl verify -CAfile "$work/ca.pem" "$work/$who.pem" >/dev/null
done
for f in ca.pem server.pem client.pem; do install -m 0644 "$work/$f" "$out/$f"; done
for f in ca.key server.key client.key; do install -m 0600 "$work/$f" "$out/$f"; done
echo "make-certs.sh: wrote ca, server ($san) and client certificates to $out"
