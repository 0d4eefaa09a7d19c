#!/usr/bin/env bash
# test_inspect_cli.sh KVWIRE SOURCE_DIR BUILD_DIR: `kvwire inspect` on the golden blobs. Valid blobs exit 0 and report
# every checksum as verified (text and --json); must-reject blobs exit 1 naming the status their .expect file names;
# usage errors exit 2.
set -u
kvwire=$1
src=$2
fail() { echo "FAIL: $*" >&2; exit 1; }

for blob in "$src"/tests/golden/wire/*.kvw; do
    out=$("$kvwire" inspect "$blob") || fail "inspect $blob exited $?"
    grep -q "blob checksum [0-9a-f]\{16\} ok" <<<"$out" || fail "$blob: no verified blob checksum in: $out"
    sections=$(sed -n 's/.*, \([0-9]*\) of [0-9]* layers.*/\1/p' <<<"$out")
    [ "$(grep -c '^[0-9].* ok$' <<<"$out")" = "$sections" ] || fail "$blob: not every section verified"
    size=$(stat -c %s "$blob")
    grep -q "total  *$size " <<<"$out" || fail "$blob: breakdown total is not the file size $size"
    json=$("$kvwire" inspect "$blob" --json) || fail "inspect --json $blob exited $?"
    grep -q '"ok":[[:space:]]*true' <<<"$json" || fail "$blob: json not ok: $json"
    grep -q "\"total\":[[:space:]]*$size" <<<"$json" || fail "$blob: json total"
done

for blob in "$src"/tests/golden/wire-errors/*.kvw; do
    want=$(sed -n 's/^expect //p' "${blob%.kvw}.expect")
    err=$("$kvwire" inspect "$blob" 2>&1 >/dev/null)
    status=$?
    [ $status = 1 ] || fail "$blob: exit status $status, expected 1"
    grep -q "$want" <<<"$err" || fail "$blob: stderr does not name $want: $err"
    json=$("$kvwire" inspect --json "$blob" 2>/dev/null)
    grep -q "\"name\":[[:space:]]*\"$want\"" <<<"$json" || fail "$blob: json error is not $want"
done

"$kvwire" inspect >/dev/null 2>&1
[ $? = 2 ] || fail "no argument: expected exit 2"
"$kvwire" inspect a b >/dev/null 2>&1
[ $? = 2 ] || fail "two files: expected exit 2"
"$kvwire" inspect /nonexistent/blob.kvw >/dev/null 2>&1
[ $? = 1 ] || fail "missing file: expected exit 1"
: >empty.kvw
"$kvwire" inspect empty.kvw 2>&1 | grep -q KW_E_WIRE_TRUNCATED || fail "empty file: expected KW_E_WIRE_TRUNCATED"
echo "inspect: all golden blobs checked"
