#!/usr/bin/env bash
# cli_deploy_tls.sh: deploy/tls/make-certs.sh makes a CA, a server and a client certificate with the openssl command
# line (chains verify, keys are 0600, the server certificate names 127.0.0.1 and localhost), and both daemons run on
# them with mutual TLS from copies of deploy/config/sharerd.tls.yaml and receiverd.tls.yaml (models from the daemon
# tests' fixture, ephemeral ports): a chat completion crosses the TLS link; a receiverd whose client certificate
# comes from another CA is refused by sharerd and says so in /health. Certificate rotation: new files (a new CA)
# written over the old ones and SIGHUP to sharerd: the connection of the running receiverd (which trusts only the old
# CA) survives and serves, and a receiverd started on the new files gets in.
. "$(dirname "$0")/../cli_lib.sh" "$@"
models=$build/tests/daemons/models
[ -d "$models/tiny-qwen3" ] || fail "no tiny models in $models (the test_daemons_models fixture makes them)"
command -v openssl >/dev/null || { echo "SKIP: openssl is not installed"; exit 77; }
. "$(dirname "$0")/daemon_lib.sh"

# health PORT: receiverd's /health body
health() { curl -s "http://127.0.0.1:$1/health"; }

mkdir -p conf
"$src/deploy/tls/make-certs.sh" --out conf/tls >make-certs.log || { cat make-certs.log; fail "make-certs.sh failed"; }
for f in ca server client; do
    [ -s conf/tls/$f.pem ] && [ -s conf/tls/$f.key ] || fail "make-certs.sh did not write $f.pem and $f.key"
    [ "$(stat -c %a conf/tls/$f.key)" = 600 ] || fail "$f.key is not mode 0600"
done
openssl verify -CAfile conf/tls/ca.pem conf/tls/server.pem conf/tls/client.pem >/dev/null ||
    fail "the chains do not verify"
openssl x509 -in conf/tls/server.pem -noout -ext subjectAltName | grep -q 'DNS:localhost, IP Address:127.0.0.1' ||
    fail "the server certificate does not name localhost and 127.0.0.1"
! "$src/deploy/tls/make-certs.sh" --out bad --san 'not a san' 2>/dev/null || fail "make-certs.sh took a malformed --san"
cp "$src/deploy/config/sharerd.tls.yaml" "$src/deploy/config/receiverd.tls.yaml" conf/

start sharer "$build/sharer/sharerd" --config conf/sharerd.tls.yaml --listen.host=127.0.0.1 --listen.port=0 \
    --models.0.path="$models/tiny-qwen2" --models.1.path="$models/tiny-qwen3" --compute.threads=1
sharer_pid=${pids[-1]} sharer_port=$port
grep -q "(tls)" sharer.log || fail "sharerd does not serve TLS"
receiver_args=(--config conf/receiverd.tls.yaml --http.host=127.0.0.1 --http.port=0 --model.path="$models/tiny-qwen3"
    --fusers.0.path="$models/tiny-fuser" --sharers.0.port="$sharer_port" --compute.threads=1 --sharer.reconnect_ms=100)
start receiver "$build/receiver/receiverd" "${receiver_args[@]}"
receiver_pid=${pids[-1]} receiver_port=$port
for _ in $(seq 1 600); do
    health $receiver_port | jq -e '.status == "ok"' >/dev/null && break
    sleep 0.1
done
health $receiver_port | jq -e '.status == "ok"' >/dev/null ||
    { health $receiver_port; fail "receiverd never reached sharerd over mutual TLS"; }
curl -s -X POST "http://127.0.0.1:$receiver_port/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"Hello there"}],"max_tokens":4}' >reply.json
jq -e '.kvwire.mode == "c2c" and (.choices[0].message.content | type == "string")' reply.json >/dev/null ||
    { cat reply.json; fail "no c2c completion over mutual TLS"; }
# one log line per request on each side: id, outcome, bytes (journald keeps them under systemd)
grep -Eq 'receiverd: request [0-9]+ ok: c2c, blob [1-9][0-9]* B, socket in [1-9]' receiver.log ||
    { cat receiver.log; fail "receiverd logged no line for the request"; }
grep -Eq 'sharerd: .*request [0-9]+ ok: model tiny-qwen2, [1-9][0-9]* frames, blob [1-9]' sharer.log ||
    { cat sharer.log; fail "sharerd logged no line for the request"; }

# a client certificate of another CA: sharerd refuses the handshake, receiverd reports why
"$src/deploy/tls/make-certs.sh" --out other --ca-name "some other CA" >/dev/null
start stranger "$build/receiver/receiverd" "${receiver_args[@]}" --sharers.0.tls_cert="$tmp/other/client.pem" \
    --sharers.0.tls_key="$tmp/other/client.key"
stranger_pid=${pids[-1]} stranger_port=$port
for _ in $(seq 1 600); do
    health $stranger_port | jq -e '.sharers[0].reason // "" | test("TLS|certificate|tls"; "i")' >/dev/null && break
    sleep 0.1
done
health $stranger_port >stranger-health.json
jq -e '.status != "ok"' stranger-health.json >/dev/null || fail "sharerd let in a client certificate of another CA"
jq -e '.sharers[0].reason // "" | test("TLS|certificate|tls"; "i")' stranger-health.json >/dev/null ||
    { cat stranger-health.json; fail "receiverd does not say the TLS handshake failed"; }

stop $stranger_pid

# rotation: a new CA, server and client certificate over the old files, then SIGHUP
chat() {
    curl -s -X POST "http://127.0.0.1:$1/v1/chat/completions" -H 'Content-Type: application/json' \
        -d '{"messages":[{"role":"user","content":"Hello again"}],"max_tokens":4}'
}
"$src/deploy/tls/make-certs.sh" --out conf/tls --ca-name "kvwire CA 2" >/dev/null
kill -HUP $sharer_pid
for _ in $(seq 300); do grep -q "reload: TLS certificate" sharer.log && break; sleep 0.1; done
grep -q "reload: TLS certificate" sharer.log || { cat sharer.log; fail "sharerd did not reload its TLS files"; }
chat $receiver_port | jq -e '.kvwire.mode == "c2c"' >/dev/null ||
    fail "the connection made before the rotation did not survive the reload"
start rotated "$build/receiver/receiverd" "${receiver_args[@]}"
rotated_pid=${pids[-1]} rotated_port=$port
for _ in $(seq 600); do
    health $rotated_port | jq -e '.status == "ok"' >/dev/null && break
    sleep 0.1
done
chat $rotated_port | jq -e '.kvwire.mode == "c2c"' >/dev/null ||
    { health $rotated_port; fail "a receiverd on the new certificates does not get in after the reload"; }
stop $rotated_pid
stop $receiver_pid
stop $sharer_pid
pids=()
echo "mutual TLS: ok ($(jq -c '.kvwire.mode' reply.json)," \
    "stranger refused: $(jq -c '.sharers[0].reason' stranger-health.json))"
