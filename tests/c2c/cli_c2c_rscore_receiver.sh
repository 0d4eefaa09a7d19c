#!/usr/bin/env bash
# cli_c2c_rscore_receiver.sh: `kvwire c2c --select proj_vnorm_topk|delta_proj_vnorm_topk --scoring receiver` (the
# preview, the receiver's selection, the final blob; c2c/kw_rselect.h, receiver/kw_receive_preview.h) on gen-model
# tiny models and a gen-fuser fuser feeding sharer layer 0 to two receiver layers:
#   with a lossless preview (bf16 rows of a bf16 cache, the bf16 codec) the receiver selects exactly the rows and
#   per-target subsets `scoring local` selects, and the tokens are the same; the final blob is local's minus the
#   SHARE_TARGETS frames the receiver no longer needs; the bytes add up (preview + selection + final); a lossy
#   int4 preview is deterministic across KW_CPU_ISA scalar/avx2 and 1/2 threads; with f32 caches the delta on a
#   preview at the final codec (int8) selects local's rows; misuse is refused.
# Arguments: kvwire binary, source dir, build dir.
# shellcheck source=../cli_lib.sh
. "$(dirname "$0")/../cli_lib.sh" "$@"

rscore_models
run() { rscore_run "$@"; }
word() { field "$1" "$2" | tr ' ' '\n' | grep -A1 -x "$3" | tail -1; } # word KEY FILE W: the word after W

for sel in proj_vnorm_topk delta_proj_vnorm_topk; do
    args=(--select "$sel" --select-proportion 0.25 --wire int8)
    run "${args[@]}" >"$sel.local"
    run "${args[@]}" --scoring receiver --preview-codec bf16 >"$sel.bf16"
    for k in selected_rows generated_ids tokens_sent tokens_fused; do
        [ "$(field $k "$sel.local")" = "$(field $k "$sel.bf16")" ] || fail "$sel: bf16 preview: $k differs from local"
    done
    grep -q '^scoring: local$' "$sel.local" || fail "$sel: $(grep '^scoring:' "$sel.local")"
    grep -q '^scoring: receiver preview bf16$' "$sel.bf16" || fail "$sel: $(grep '^scoring:' "$sel.bf16")"
    grep -q '^target_subsets: 0 frames 0 bytes$' "$sel.bf16" || fail "$sel: the receiver's subsets were sent back"
    targets=$(field target_subsets "$sel.local" | cut -d' ' -f3)
    [ "$targets" -gt 0 ] || fail "$sel: local sent no SHARE_TARGETS frame"
    # final: the same blob bytes; local adds its SHARE_TARGETS frames
    [ "$(field wire_bytes "$sel.local")" = "$(field wire_bytes "$sel.bf16")" ] || fail "$sel: final blob differs"
    [ "$(word scoring_bytes "$sel.local" final)" = $(($(field wire_bytes "$sel.local") + targets)) ] \
        || fail "$sel: local's final bytes"
    [ "$(word scoring_bytes "$sel.local" preview)" = 0 ] && [ "$(word scoring_bytes "$sel.local" selection)" = 0 ] \
        || fail "$sel: local has a preview"
    pv=$(word scoring_bytes "$sel.bf16" preview)
    sb=$(word scoring_bytes "$sel.bf16" selection)
    fb=$(word scoring_bytes "$sel.bf16" final)
    [ "$fb" = "$(field wire_bytes "$sel.bf16")" ] || fail "$sel: receiver's final bytes"
    [ "$(word scoring_bytes "$sel.bf16" total)" = $((pv + sb + fb)) ] || fail "$sel: the bytes do not add up"
    [ "$pv" -gt "$fb" ] && [ "$sb" -gt 0 ] || fail "$sel: $(field scoring_bytes "$sel.bf16")"
    grep -q 'preview_sharer .* preview_decode .* preview_score ' "$sel.bf16" || fail "$sel: no preview timings"
    # the default int4 preview: a quarter of bf16's codes; deterministic across ISA and threads
    KW_CPU_ISA=scalar run "${args[@]}" --threads 1 --scoring receiver --wire-dump "$sel.a" >"$sel.a"
    KW_CPU_ISA=avx2 run "${args[@]}" --threads 2 --scoring receiver --wire-dump "$sel.b" >"$sel.b"
    diff <(stable "$sel.a") <(stable "$sel.b") || fail "$sel: int4 preview differs across ISA and threads"
    cmp "$sel.a.0.kvw" "$sel.b.0.kvw" || fail "$sel: final blob differs across ISA and threads"
    grep -q '^scoring: receiver preview int4:token$' "$sel.a" || fail "$sel: $(grep '^scoring:' "$sel.a")"
    [ "$(word scoring_bytes "$sel.a" preview)" -lt "$pv" ] || fail "$sel: int4 preview not below bf16's"
    [ "$(word scoring_bytes "$sel.a" selection)" = "$sb" ] || fail "$sel: the selection's size is its shape's"
done

# f32 caches: no v1 codec is a lossless preview, but the delta quantizes the preview again with the final codec, and
# int8 per token is idempotent up to the scale's rounding: a preview at the final codec selects local's rows
for s in "" "--scoring receiver --preview-codec int8"; do
    # shellcheck disable=SC2086
    run --fp32 --select delta_proj_vnorm_topk --select-proportion 0.3 --wire int8 $s >"f32.${s:+r}l"
done
for k in selected_rows generated_ids; do
    [ "$(field $k f32.l)" = "$(field $k f32.rl)" ] || fail "fp32 delta, int8 preview: $k differs from local"
done

set +e
for bad in "--select proj_vnorm_topk --scoring receiver" "--select vnorm_topk --wire int8 --scoring receiver" \
    "--select proj_vnorm_topk --wire int8 --preview-codec bf16" \
    "--select proj_vnorm_topk --budget-bytes 100000 --scoring receiver"; do
    # shellcheck disable=SC2086
    run $bad >/dev/null 2>&1
    [ $? -eq 2 ] || fail "accepted: $bad"
done
run --select proj_vnorm_topk --wire int8 --scoring receiver --preview-codec nope >/dev/null 2>&1
[ $? -eq 1 ] || fail "an unknown preview codec accepted"
set -e
echo ok
