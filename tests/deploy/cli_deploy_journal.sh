#!/usr/bin/env bash
# cli_deploy_journal.sh KVWIRE SOURCE_DIR BUILD_DIR KW_JOURNAL_SINK: when their stderr is the journal (JOURNAL_STREAM
# names file descriptor 2, as systemd sets it for StandardError=journal), sharerd and receiverd send their records
# through libsystemd's sd_journal_send with MESSAGE, PRIORITY, SYSLOG_IDENTIFIER and, for each request, KW_* fields
# equal to what the request's line says (and to the HTTP answer). Without a journald and without touching the host:
# the script runs itself again in a private mount namespace (unshare -m) with a tmpfs over /run, where the helper
# kw_journal_sink binds libsystemd's fixed socket /run/systemd/journal/socket and writes each datagram it receives
# as one entry of entries.txt. A receiverd whose JOURNAL_STREAM names another file keeps its plain stderr lines.
# Skipped (77) when not root or when no mount namespace can be made here.
set -euo pipefail
if [ "${KW_JOURNAL_TEST_NAMESPACE:-}" != 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "SKIP: needs root (a private mount namespace with a tmpfs over /run)"; exit 77; }
    unshare -m --propagation private sh -c 'mount -t tmpfs kw-probe /run' 2>/dev/null ||
        { echo "SKIP: unshare -m cannot make a mount namespace with a tmpfs over /run here"; exit 77; }
    KW_JOURNAL_TEST_NAMESPACE=1 exec unshare -m --propagation private bash "$0" "$@"
fi
. "$(dirname "$0")/../cli_lib.sh" "$@"
sink=$4
models=$build/tests/daemons/models
[ -d "$models/tiny-qwen3" ] || fail "no tiny models in $models (the test_daemons_models fixture makes them)"
. "$(dirname "$0")/daemon_lib.sh"

# --- the helper's parser: both encodings of the native protocol, and a broken datagram
printf 'MESSAGE\n\x0b\x00\x00\x00\x00\x00\x00\x00two\nlines \\\nPRIORITY=6\nKW_X=a=b\n' >binary.dgram
"$sink" --parse binary.dgram >binary.txt || { cat binary.txt; fail "kw_journal_sink cannot parse a binary field"; }
printf 'MESSAGE=two\\nlines \\\\\nPRIORITY=6\nKW_X=a=b\n\n' | cmp -s - binary.txt ||
    { cat binary.txt; fail "kw_journal_sink decodes a binary field wrongly"; }
printf 'MESSAGE\n\x0b\x00\x00\x00\x00\x00\x00\x00two\n' >broken.dgram
! "$sink" --parse broken.dgram >broken.txt && grep -q '^PARSE_ERROR=' broken.txt ||
    fail "kw_journal_sink took a truncated binary field"

# --- journald's socket in this namespace
mount -t tmpfs kw-journal-test /run
mkdir -p /run/systemd/journal
"$sink" /run/systemd/journal/socket entries.txt &
pids+=($!)
for _ in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
[ -S /run/systemd/journal/socket ] || fail "kw_journal_sink did not bind /run/systemd/journal/socket"

# journaled NAME STREAM PROGRAM ARGS...: start (stderr in NAME.log) with JOURNAL_STREAM naming the file STREAM's
# device and inode (NAME.log: the daemon's stderr is the journal)
journaled() {
    local name=$1 stream=$2
    shift 2
    : >"$name.log" && : >"$stream"
    start "$name" env JOURNAL_STREAM="$(stat -c %d:%i "$stream")" "$@"
}
# post PORT PATH BODY: the answer's body
post() { curl -s -X POST "http://127.0.0.1:$1$2" -H 'Content-Type: application/json' -d "$3"; }
chat='{"messages":[{"role":"user","content":"Hello there"}],"max_tokens":4}'
# entry LINE...: the last entry of entries.txt holding every LINE ("NAME=value") as a field
entry() {
    awk -v RS= 'BEGIN { for (i = 1; i < ARGC; ++i) want[i] = ARGV[i]; n = ARGC - 1; ARGC = 1 }
        { split($0, lines, "\n"); got = 0
          for (i = 1; i <= n; ++i) for (l in lines) if (lines[l] == want[i]) { ++got; break }
          if (got == n) last = $0 }
        END { if (last != "") print last }' "$@" <entries.txt
}
# value NAME ENTRY: the value of field NAME in ENTRY
value() { sed -n "s/^$1=//p" <<<"$2" | head -1; }
# wait_entry LINE...: waits for such an entry (the daemons log after answering)
wait_entry() {
    for _ in $(seq 100); do [ -n "$(entry "$@")" ] && return 0; sleep 0.05; done
    cat entries.txt
    fail "no journal entry with $*"
}

journaled sharer sharer.log "$build/sharer/sharerd" --config "$src/deploy/config/sharerd.tiny.yaml" --listen.port=0 \
    --models.0.path="$models/tiny-qwen2" --models.1.path="$models/tiny-qwen3"
sharer_pid=${pids[-1]} sharer_port=$port
mkdir conf && cp "$src/deploy/config/receiverd.tiny.yaml" conf/
receiver_args=(--config conf/receiverd.tiny.yaml --http.port=0 --model.path="$models/tiny-qwen3"
    --fusers.0.path="$models/tiny-fuser" --sharers.0.port="$sharer_port" --sharer.reconnect_ms=100)
wait_ready() {
    for _ in $(seq 600); do
        curl -s "http://127.0.0.1:$1/health" | jq -e '.status == "ok"' >/dev/null && return 0
        sleep 0.1
    done
    fail "receiverd never reached sharerd"
}

# --- control: JOURNAL_STREAM naming another file than stderr: plain lines on stderr, nothing in the journal
journaled plain plain.other "$build/receiver/receiverd" "${receiver_args[@]}"
plain_pid=${pids[-1]}
wait_ready $port
post $port /v1/chat/completions "$chat" | jq -e '.kvwire.mode == "c2c"' >/dev/null || fail "no answer from receiverd"
stop $plain_pid
grep -Eq '^[0-9T:.-]+Z info  receiverd: request 1 ok: c2c, blob [1-9]' plain.log ||
    { cat plain.log; fail "a receiverd whose stderr is not the journal did not log its request line there"; }
[ -z "$(entry SYSLOG_IDENTIFIER=receiverd)" ] ||
    { cat entries.txt; fail "a receiverd whose stderr is not the journal sent journal entries"; }

# --- the journal: an ok request through both daemons
journaled receiver receiver.log "$build/receiver/receiverd" "${receiver_args[@]}"
receiver_pid=${pids[-1]} receiver_port=$port
wait_ready $receiver_port
post $receiver_port /v1/chat/completions "$chat" >reply.json
jq -e '.kvwire.mode == "c2c"' reply.json >/dev/null || { cat reply.json; fail "no c2c answer"; }
id=$(jq -r '.id' reply.json)
id=${id##*-}
wait_entry SYSLOG_IDENTIFIER=receiverd KW_REQUEST_ID="$id"
e=$(entry SYSLOG_IDENTIFIER=receiverd KW_REQUEST_ID="$id")
msg=$(value MESSAGE "$e")
re="^receiverd: request $id ok: c2c, blob ([0-9]+) B, socket in ([0-9]+) B out ([0-9]+) B, text ([0-9]+) B, "
re+="([0-9]+) tokens, ([0-9.]+) ms$"
[[ $msg =~ $re ]] || { echo "$e"; fail "receiverd's MESSAGE is not its request line"; }
for want in PRIORITY=6 KW_MODE=c2c KW_OUTCOME=ok KW_STATUS=200 "KW_BLOB_BYTES=${BASH_REMATCH[1]}" \
    "KW_BYTES_RECEIVED=${BASH_REMATCH[2]}" "KW_BYTES_SENT=${BASH_REMATCH[3]}" "KW_TEXT_BYTES=${BASH_REMATCH[4]}" \
    "KW_TOKENS=${BASH_REMATCH[5]}" "KW_DURATION_MS=${BASH_REMATCH[6]}"; do
    grep -qxF -- "$want" <<<"$e" || { echo "$e"; fail "receiverd's entry lacks $want"; }
done
blob=${BASH_REMATCH[1]}
[ "$blob" -gt 0 ] || fail "receiverd's entry says no blob crossed"
jq -e --argjson b "$blob" --argjson i "$(value KW_BYTES_RECEIVED "$e")" \
    '.kvwire.bytes.blob == $b and .kvwire.bytes.socket_in == $i' reply.json >/dev/null ||
    { echo "$e"; jq .kvwire.bytes reply.json; fail "receiverd's entry and its answer disagree on the bytes"; }
! grep -q "request $id ok" receiver.log || fail "receiverd wrote its request line to stderr as well"

wait_entry SYSLOG_IDENTIFIER=sharerd KW_OUTCOME=ok
e=$(entry SYSLOG_IDENTIFIER=sharerd KW_OUTCOME=ok)
msg=$(value MESSAGE "$e")
re='^sharerd: (.+): request ([0-9]+) ok: model tiny-qwen2, ([0-9]+) frames, blob ([0-9]+) B, ([0-9.]+) ms$'
[[ $msg =~ $re ]] || { echo "$e"; fail "sharerd's MESSAGE is not its request line"; }
for want in PRIORITY=6 KW_MODE=c2c "KW_PEER=${BASH_REMATCH[1]}" "KW_REQUEST_ID=${BASH_REMATCH[2]}" \
    KW_MODEL=tiny-qwen2 "KW_FRAMES=${BASH_REMATCH[3]}" "KW_BYTES_SENT=$blob" "KW_DURATION_MS=${BASH_REMATCH[5]}"; do
    grep -qxF -- "$want" <<<"$e" || { echo "$e"; fail "sharerd's entry lacks $want"; }
done
[ "${BASH_REMATCH[4]}" = "$blob" ] || fail "sharerd's line says blob ${BASH_REMATCH[4]} B, receiverd's $blob B"
[ "${BASH_REMATCH[2]}" = "$id" ] || fail "sharerd's request ${BASH_REMATCH[2]} is not receiverd's $id"
[ -n "$(entry SYSLOG_IDENTIFIER=sharerd PRIORITY=6 "$(grep -m1 '^MESSAGE=sharerd: listening on' entries.txt)")" ] ||
    fail "sharerd's start line is not in the journal"

# --- a failed request: its outcome is the error's name, its status the HTTP status
post $receiver_port /v1/completions '{"prompt":"","max_tokens":2}' >error.json
jq -e '.error' error.json >/dev/null || { cat error.json; fail "an empty prompt was answered"; }
failed=$((id + 1))
wait_entry SYSLOG_IDENTIFIER=receiverd KW_REQUEST_ID=$failed
e=$(entry SYSLOG_IDENTIFIER=receiverd KW_REQUEST_ID=$failed)
re="^receiverd: request $failed failed \\(([0-9]+)\\): .* \\((KW_E_[A-Z_]+)\\)$"
[[ $(value MESSAGE "$e") =~ $re ]] || { echo "$e"; fail "receiverd's MESSAGE is not its failure line"; }
for want in PRIORITY=6 "KW_STATUS=${BASH_REMATCH[1]}" "KW_OUTCOME=${BASH_REMATCH[2]}"; do
    grep -qxF -- "$want" <<<"$e" || { echo "$e"; fail "receiverd's failure entry lacks $want"; }
done
[ "${BASH_REMATCH[1]}" = 400 ] || fail "the failure's status is ${BASH_REMATCH[1]}, not 400"
! grep -q '^KW_BYTES' <<<"$e" || fail "a failed request's entry claims bytes its line does not"

# --- a warning: a reload of a config that no longer parses
echo 'http: [' >>conf/receiverd.tiny.yaml
kill -HUP $receiver_pid
wait_entry SYSLOG_IDENTIFIER=receiverd PRIORITY=4
grep -q '^MESSAGE=receiverd: reload failed' <<<"$(entry SYSLOG_IDENTIFIER=receiverd PRIORITY=4)" ||
    fail "the warning in the journal is not the failed reload"

stop $receiver_pid
stop $sharer_pid
! grep -q '^PARSE_ERROR=' entries.txt || { cat entries.txt; fail "a datagram broke the native protocol"; }
echo "journal: ok ($(grep -c '^MESSAGE=' entries.txt) entries; request $id: blob $blob B)"
