#!/usr/bin/env bash
# cli_c2c_rscore.sh: `kvwire c2c --select proj_vnorm_topk|delta_proj_vnorm_topk` (c2c/kw_rscore.h) on gen-model tiny
# models and a gen-fuser fuser whose last_aligned mapping feeds one sharer layer to two receiver layers:
#   each receiver layer its own round(P * T) rows, the sharer layer feeding two sends their union and one
#   SHARE_TARGETS frame (target_subsets); proportion 1 gives the full transfer's tokens; the blobs (positions and codes)
#   are byte-identical with KW_CPU_ISA scalar and avx2 and with 1 and 2 threads, with and without --wire; the
#   scoring cost is reported; kv_direct is refused.
# Arguments: kvwire binary, source dir, build dir.
# shellcheck source=../cli_lib.sh
. "$(dirname "$0")/../cli_lib.sh" "$@"

rscore_models
run() { rscore_run "$@"; }

for sel in proj_vnorm_topk delta_proj_vnorm_topk; do
    KW_CPU_ISA=scalar run --threads 1 --select $sel --select-proportion 0.25 --wire int8 --wire-dump "$sel.a" >"$sel.a"
    KW_CPU_ISA=avx2 run --threads 2 --select $sel --select-proportion 0.25 --wire int8 --wire-dump "$sel.b" >"$sel.b"
    diff <(stable "$sel.a") <(stable "$sel.b") || fail "$sel: output differs across ISA and threads"
    cmp "$sel.a.0.kvw" "$sel.b.0.kvw" || fail "$sel: blob differs across ISA and threads"
    total=$(field tokens_sent "$sel.a" | cut -d' ' -f3)
    t=$((total / 2)) # two sharer layers sent
    q=$((t / 4)); r=$((t % 4)) # round(t / 4), half to even
    if [ $r -gt 2 ] || { [ $r -eq 2 ] && [ $((q % 2)) -eq 1 ]; }; then q=$((q + 1)); fi
    # sharer layer 1 feeds one receiver layer (q rows), layer 0 two: the union of their top-q (q + 1 .. 2q rows,
    # given that the two receiver layers rank differently), with one SHARE_TARGETS frame saying which is whose
    sent=$(field tokens_sent "$sel.a" | cut -d' ' -f1)
    [ "$sent" -gt $((2 * q)) ] && [ "$sent" -le $((3 * q)) ] || fail "$sel: $(field tokens_sent "$sel.a")"
    grep -q '^target_subsets: 1 frames [1-9][0-9]* bytes$' "$sel.a" || fail "$sel: $(grep target_subsets "$sel.a")"
    grep -q 'scoring_prefill .* scoring_projection .* (3 projections)' "$sel.a" || fail "$sel: scoring cost line"
    # in memory (no codec): also the same across ISA and threads
    KW_CPU_ISA=scalar run --threads 1 --select $sel --select-proportion 0.5 >"$sel.m1"
    KW_CPU_ISA=avx2 run --threads 2 --select $sel --select-proportion 0.5 >"$sel.m2"
    diff <(stable "$sel.m1") <(stable "$sel.m2") || fail "$sel: in-memory output differs across ISA and threads"
done
# every row selected: the full transfer's tokens
run --wire int8 >full.txt
run --wire int8 --select proj_vnorm_topk --select-proportion 1 >all.txt
diff <(grep -E '^(generated_ids|wire_bytes):' full.txt) <(grep -E '^(generated_ids|wire_bytes):' all.txt) \
    || fail "proportion 1 differs from the full transfer"

set +e
"$kvwire" c2c --receiver recv --prompt x --mode kv_direct --select proj_vnorm_topk >/dev/null 2>&1
[ $? -eq 2 ] || fail "kv_direct with proj_vnorm_topk accepted"
set -e
echo ok
