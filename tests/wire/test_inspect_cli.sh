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

# v1.1 fields: the version, zero points, channel runs, int3/int2 (v11_base.kvw)
out=$("$kvwire" inspect "$src/tests/golden/wire/v11_base.kvw") || fail "inspect v11_base exited $?"
for want in "KVWire v1.1" "K int2-asym/channel4/f16 (256 + 48 B)" "V int3/token/bf16" "K int3-asym/group8/f32" \
    "of which zeros"; do
    grep -qF "$want" <<<"$out" || fail "v11_base: no '$want' in: $out"
done
json=$("$kvwire" inspect --json "$src/tests/golden/wire/v11_base.kvw")
for want in '"version":[[:space:]]*1.1' '"run_tokens":[[:space:]]*4' '"zero_points":[[:space:]]*true' \
    '"zero_point_bytes":[[:space:]]*128' '"codec":[[:space:]]*"int2"'; do
    grep -q "$want" <<<"$json" || fail "v11_base json: no $want"
done
# the rotation flags (v11_rotated.kvw, FORMAT.md §5.12)
out=$("$kvwire" inspect "$src/tests/golden/wire/v11_rotated.kvw") || fail "inspect v11_rotated exited $?"
grep -qF "K and V Hadamard-rotated" <<<"$out" || fail "v11_rotated: no rotation line in: $out"
json=$("$kvwire" inspect --json "$src/tests/golden/wire/v11_rotated.kvw")
for want in '"rotated_keys":[[:space:]]*true' '"rotated_values":[[:space:]]*true'; do
    grep -q "$want" <<<"$json" || fail "v11_rotated json: no $want"
done
# a rANS-coded body (v11_rans.kvw, FORMAT.md §5.15): the sizes and the coder named; a zstd body names zstd
out=$("$kvwire" inspect "$src/tests/golden/wire/v11_rans.kvw") || fail "inspect v11_rans exited $?"
grep -qF "724->703 rans" <<<"$out" || fail "v11_rans: no '724->703 rans' in: $out"
"$kvwire" inspect --json "$src/tests/golden/wire/v11_rans.kvw" | grep -q '"coder":[[:space:]]*"rans"' \
    || fail "v11_rans json: no coder rans"
"$kvwire" inspect --json "$src/tests/golden/wire/int8_zstd.kvw" | grep -q '"coder":[[:space:]]*"zstd"' \
    || fail "int8_zstd json: no coder zstd"
# log8 scales (v11_int4_channel4_log8.kvw): one byte per scale
out=$("$kvwire" inspect "$src/tests/golden/wire/v11_int4_channel4_log8.kvw") || fail "inspect log8 exited $?"
for want in "KVWire v1.1" "K int4/channel4/log8 (96 + 160 B)" "V int8/group8/log8 (40 + 320 B)"; do
    grep -qF "$want" <<<"$out" || fail "v11_int4_channel4_log8: no '$want' in: $out"
done
"$kvwire" inspect --json "$src/tests/golden/wire/v11_int4_channel4_log8.kvw" | grep -q '"scale_dtype":[[:space:]]*"log8"' \
    || fail "log8 json: no scale_dtype log8"
out=$("$kvwire" inspect "$src/tests/golden/wire/int8_zstd.kvw")
grep -q "KVWire v1," <<<"$out" || fail "a v1 blob is not reported as v1"
# the codes' order-0 entropy: between 0 and the codec's width per code, the sections' sum in the breakdown; none for a
# blob of passthrough tensors only
for blob in int8_token_f16_full int4_head_bf16_range v11_int2z_channel4_f16 mixed_three_sections; do
    out=$("$kvwire" inspect "$src/tests/golden/wire/$blob.kvw")
    e=$(sed -n 's/.* codes: order-0 entropy \([0-9.]*\) bits\/code.*/\1/p' <<<"$out")
    width=$(case $blob in int8*|mixed*) echo 8 ;; int4*) echo 4 ;; *) echo 2 ;; esac)
    awk -v e="$e" -v w="$width" 'BEGIN { exit !(e != "" && e > 0 && e <= w) }' ||
        fail "$blob: code entropy '$e' not in (0, $width]"
    json=$("$kvwire" inspect --json "$src/tests/golden/wire/$blob.kvw")
    sum=$(grep -o '"code_entropy_bits":[[:space:]]*[0-9.e+-]*' <<<"$json" | sed 's/.*:[[:space:]]*//' |
        awk '{ v[NR] = $1 } END { s = 0; for (i = 1; i < NR; ++i) s += v[i]; printf "%.6f %.6f\n", s, v[NR] }')
    read -r parts total <<<"$sum"
    awk -v a="$parts" -v b="$total" 'BEGIN { d = a - b; exit !(d < 1e-3 && d > -1e-3 && b > 0) }' ||
        fail "$blob: the sections' code entropy $parts is not the breakdown's $total"
done
"$kvwire" inspect "$src/tests/golden/wire/passthrough_bf16_f16.kvw" | grep -q "order-0 entropy" &&
    fail "passthrough tensors have no codes to entropy-code"

"$kvwire" inspect >/dev/null 2>&1
[ $? = 2 ] || fail "no argument: expected exit 2"
"$kvwire" inspect a b >/dev/null 2>&1
[ $? = 2 ] || fail "two files: expected exit 2"
"$kvwire" inspect /nonexistent/blob.kvw >/dev/null 2>&1
[ $? = 1 ] || fail "missing file: expected exit 1"
: >empty.kvw
"$kvwire" inspect empty.kvw 2>&1 | grep -q KW_E_WIRE_TRUNCATED || fail "empty file: expected KW_E_WIRE_TRUNCATED"
echo "inspect: all golden blobs checked"
