#!/usr/bin/env bash
# cli_bench_model.sh KVWIRE SRC BUILD: `kvwire bench model` on a tiny random model: every rep is bracketed by bandwidth
# reads (the per-rep ratio's median lies between its min and max, the reads around the reps lie below the run's best
# bandwidth), and the peak RSS of the model phase does not count the bandwidth buffer freed before the load: runs with
# a 64 and a 320 MiB buffer report peak RSS less than 64 MB apart (the process's own RSS, e.g. CUDA's libraries,
# is in both; where /proc/self/clear_refs is not writable the line says so instead). --interleave-hugepages runs both
# KW_HUGEPAGES settings, finds the same tokens, and the KW_HUGEPAGES=0 instance adds no madvise(MADV_HUGEPAGE)'d memory.
set -u
kvwire=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=
fail() { echo "FAIL: $*"; echo "$out"; exit 1; }
"$kvwire" gen-model --arch qwen3 --preset tiny --seed 4 --tokenizer "$src/models/tokenizers/qwen3" --out "$tmp/m" \
    >/dev/null || fail "gen-model"
out=$("$kvwire" bench model --model "$tmp/m" --threads 2 --prompt-len 4 --decode 4 --reps 3 --bw-mib 64) ||
    fail "exit $?"
line=$(grep '^decode against the reads around each rep' <<<"$out") || fail "no per-rep line"
read -r med lo hi blo bhi < <(sed -n 's/.*median \([0-9.]*\), min \([0-9.]*\), max \([0-9.]*\) over 3 reps; those reads \([0-9.]*\)-\([0-9.]*\) GB\/s$/\1 \2 \3 \4 \5/p' <<<"$line")
[ -n "${bhi:-}" ] || fail "per-rep line unreadable"
bw=$(sed -n 's/^baseline: read \([0-9.]*\) GB\/s.*/\1/p' <<<"$out")
[ -n "$bw" ] || fail "no baseline"
awk -v m="$med" -v l="$lo" -v h="$hi" -v bl="$blo" -v bh="$bhi" -v b="$bw" \
    'BEGIN {exit !(l > 0 && l <= m && m <= h && bl > 0 && bl <= bh && bh <= b + 0.005)}' ||
    fail "per-rep figures out of order: median $med min $lo max $hi, reads $blo-$bhi, best $bw"
rss=$(sed -n 's/^peak RSS: \([0-9.]*\) MB (model phase)$/\1/p' <<<"$out")
if [ -n "$rss" ]; then
    out=$("$kvwire" bench model --model "$tmp/m" --threads 2 --prompt-len 4 --decode 4 --reps 3 --bw-mib 320) ||
        fail "exit $? (--bw-mib 320)"
    rss2=$(sed -n 's/^peak RSS: \([0-9.]*\) MB (model phase)$/\1/p' <<<"$out")
    awk -v a="$rss" -v b="$rss2" 'BEGIN {exit !(a > 0 && b > 0 && b - a < 64 && a - b < 64)}' ||
        fail "peak RSS $rss MB with a 64 MiB bandwidth buffer, $rss2 MB with 320 MiB: the buffer is counted"
else
    grep -q '^peak RSS: .*clear_refs not writable' <<<"$out" || fail "no peak RSS line"
fi
out=$(env -u KW_HUGEPAGES "$kvwire" bench model --model "$tmp/m" --threads 2 --prompt-len 4 --decode 4 --reps 1 \
    --bw-mib 64 --interleave-hugepages) || fail "exit $? (--interleave-hugepages)"
grep -q '^decode, steps interleaved: huge pages .* over 4 steps each; tokens identical$' <<<"$out" ||
    fail "no interleaved huge-page line"
# the second instance runs with KW_HUGEPAGES=0 (the first with it unset: on), so it must add no advised memory
advised=$(sed -n 's/^huge pages: advised \(-\?[0-9]*\) kB with the first instance, \(-\?[0-9]*\) kB with both$/\1 \2/p' \
    <<<"$out")
[ -n "$advised" ] || fail "no advised huge-page line"
read -r adv0 adv1 <<<"$advised"
[ "$adv0" = "$adv1" ] || fail "the KW_HUGEPAGES=0 instance added advised memory ($adv0 kB -> $adv1 kB)"
"$kvwire" bench model --model "$tmp/m" --bw-mib 0 >/dev/null 2>&1; [ $? -eq 2 ] || fail "--bw-mib 0 is a usage error"
echo ok
