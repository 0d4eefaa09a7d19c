#!/usr/bin/env bash
# cli_c2c_kv_store.sh: `kvwire c2c --mode kv_direct` into a quantized receiver cache (receiver/kw_kv_pages.h).
#   --wire cache asks the sharer for the cache's layout and every shared row of every layer is stored as its sent codes
#   (kv_store: direct, the rows of the last partial page counted in rows_tail; log8 scales, e8m0 spelled out works too); --requantize stores the same blob
#   through the quantizer (reason forced); another layout is requantized with its reason; a dense cache says dense, rows without --wire no_codec;
#   int4 and int6 caches the same; refusals: --cache outside kv_direct (receiver_only), --wire cache without --cache, a page length
#   that is not a power of two.
# Arguments: kvwire binary, source dir, build dir.
# shellcheck source=../cli_lib.sh
. "$(dirname "$0")/../cli_lib.sh" "$@"

"$kvwire" gen-model --arch qwen3 --preset tiny --layers 3 --seed 1 --tied 0 --tokenizer "$src/models/tokenizers/qwen3" \
    --out recv >/dev/null
p="Name three colours of the rainbow and say which one is in the middle, and then explain why the sky is blue."
run() { "$kvwire" c2c --receiver recv --prompt "$p" --mode kv_direct --max-new-tokens 6 --threads 2 "$@"; }

for codec in int8 int6 int4; do
    run --cache "$codec" --cache-page-tokens 16 --wire cache >d.txt
    n=$(($(field prompt_tokens d.txt) - 1)) # the shared tokens
    [ "$(field kv_store d.txt)" = "direct rows_direct $((3 * n)) rows_tail $((3 * (n % 16))) rows_requantized 0 reason none" ] \
        || fail "$codec --wire cache: $(field kv_store d.txt)"
    [ "$(field wire_codec d.txt)" = "cache gran channel16 scale log8 zstd 0" ] || fail "$codec: $(field wire_codec d.txt)"
    run --cache "$codec" --cache-page-tokens 16 --wire cache --requantize >r.txt
    [ "$(field kv_store r.txt)" = "requantized rows_direct 0 rows_tail 0 rows_requantized $((3 * n)) reason forced" ] \
        || fail "$codec --requantize: $(field kv_store r.txt)"
done
run --cache int4 --wire int4 >o.txt
[ "$(field kv_store o.txt | sed 's/.* reason //')" = scale_dtype ] || fail "int4 token f32: $(field kv_store o.txt)"
# the cache layout spelled out, with e8m0 scales instead of log8: still stored directly
run --cache int8 --cache-page-tokens 16 --wire int8 --wire-gran channel16 --wire-scale e8m0 --wire-value int8:group32 >o.txt
[ "$(field kv_store o.txt | sed 's/ rows_direct.*reason / /')" = "direct none" ] || fail "int8 e8m0: $(field kv_store o.txt)"
run --cache int8 --wire int8 --wire-gran channel64 --wire-scale e8m0 >o.txt # pages of 64: K fits, V per token
[ "$(field kv_store o.txt | sed 's/.* reason //')" = value_layout ] || fail "int8 channel64: $(field kv_store o.txt)"
run --wire int8 >o.txt
[ "$(field kv_store o.txt | sed 's/ rows.*reason / /')" = "dense dense_cache" ] || fail "bf16: $(field kv_store o.txt)"
run --cache int8 >o.txt # rows in memory, no codec: quantized once
[ "$(field kv_store o.txt | sed 's/ rows.*reason / /')" = "requantized no_codec" ] || fail "rows: $(field kv_store o.txt)"

# --cache-layer (kvwire generate's parser): every layer int8 over --cache int4 is --cache int8, every layer bf16 over
# --cache int6 is the dense bf16 cache, a mix runs; outside kv_direct, with --wire cache or a layer out of range it is
# refused
run --cache int8 --wire int8 >c8.txt
run --cache int4 --wire int8 --cache-layer 0=int8 --cache-layer 1=int8 --cache-layer -1=int8 >c48.txt
diff <(stable c8.txt) <(stable c48.txt) || fail "every layer int8 over --cache int4 is not --cache int8"
run --wire int8 >cb.txt
run --cache int6 --wire int8 --cache-layer 0:bf16 --cache-layer 1:bf16 --cache-layer 2:bf16 >c6b.txt
diff <(stable cb.txt | grep -v ^kv_store) <(stable c6b.txt | grep -v ^kv_store) ||
    fail "every layer bf16 over --cache int6 is not the bf16 cache"
run --cache int6 --wire int8 --cache-layer 0=int8 --cache-layer -1=bf16 >cm.txt
grep -q '^generated_ids: \[[0-9]' cm.txt || fail "a mixed cache: $(cat cm.txt)"
cmp -s <(stable cm.txt) <(stable c8.txt) && cmp -s <(stable cm.txt) <(stable cb.txt) &&
    fail "a mixed cache gave the same output as int8 and as bf16"
for bad in "--cache-layer 0=int8 --mode receiver_only:2:for --mode kv_direct" \
    "--cache int8 --cache-page-tokens 16 --wire cache --cache-layer 0=int4:2:one layout for every layer" \
    "--cache int8 --cache-layer 3=int4:1:out of range" "--cache-layer 0=int8 --cache-layer 0=int4:1:twice"; do
    st=0
    # shellcheck disable=SC2086
    run ${bad%%:*} >/dev/null 2>err.txt || st=$?
    want=${bad#*:}
    [ "$st" = "${want%%:*}" ] && grep -q -- "${want#*:}" err.txt || fail "${bad%%:*}: status $st, $(cat err.txt)"
done
st=0
run --cache int8 --mode receiver_only >/dev/null 2>err.txt || st=$?
[ "$st" = 2 ] && grep -q "for --mode kv_direct" err.txt || fail "--cache with receiver_only: status $st"
st=0
run --wire cache >/dev/null 2>err.txt || st=$?
[ "$st" = 2 ] && grep -q "need a quantized --cache" err.txt || fail "--wire cache without --cache: status $st"
st=0
run --cache int8 --cache-page-tokens 48 --wire cache >/dev/null 2>err.txt || st=$?
[ "$st" != 0 ] && grep -q "power of two" err.txt || fail "pages of 48: status $st, $(cat err.txt)"
echo ok
