#!/usr/bin/env bash
# cli_bench_model.sh KVWIRE SRC BUILD: `kvwire bench model` on a tiny random model: every rep is bracketed by bandwidth
# reads (the per-rep ratio's median lies between its min and max, the reads around the reps lie below the run's best
# bandwidth), and the peak RSS of the model phase does not count the bandwidth buffer freed before the load: runs with
# a 64 and a 320 MiB buffer report peak RSS less than 64 MB apart (the process's own RSS, e.g. CUDA's libraries,
# is in both; where /proc/self/clear_refs is not writable the line says so instead). --interleave-hugepages runs both
# KW_HUGEPAGES settings, finds the same tokens, and the KW_HUGEPAGES=0 instance adds no madvise(MADV_HUGEPAGE)'d memory.
# No run prints an overall achieved/bound above 1.00 unless it also notes that the caches hold much of the bytes per token (the
# tiny model: 20 MB); a 4-layer model of 151 MB bf16 weights is run for that, and must not get the note.
set -u
kvwire=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=
fail() { echo "FAIL: $*"; echo "$out"; exit 1; }
# the run's achieved/bound (the best decode against the best read of the run) at most 1.00, unless the run notes that
# the caches hold the bytes; the per-rep figures (a rep against the reads just around it) are left out: on a shared
# machine a rep can meet a quiet moment that both reads around it missed (the idle peer run of 2026-12-06 05:53 printed
# a per-rep median of 1.10 once for SmolLM2 BF16, 259 MB per token)
check_bound() {
    grep -q '^note: .* the caches hold much of it' <<<"$out" && return 0
    local ratios
    ratios=$(grep -o 'achieved/bound = [0-9.]*' <<<"$out" | grep -o '[0-9][0-9.]*')
    [ -n "$ratios" ] || fail "no achieved/bound figure"
    awk '$1 > 1.0 {bad = 1} END {exit bad}' <<<"$ratios" || fail "achieved/bound above 1.00: the bound is not a bound"
}
"$kvwire" gen-model --arch qwen3 --preset tiny --seed 4 --tokenizer "$src/models/tokenizers/qwen3" --out "$tmp/m" \
    >/dev/null || fail "gen-model"
out=$("$kvwire" bench model --model "$tmp/m" --threads 2 --prompt-len 4 --decode 4 --reps 3 --bw-mib 64) ||
    fail "exit $?"
check_bound
line=$(grep '^decode against the reads around each rep' <<<"$out") || fail "no per-rep line"
read -r med lo hi blo bhi < <(sed -n 's/.*median \([0-9.]*\), min \([0-9.]*\), max \([0-9.]*\) over 3 reps; those reads \([0-9.]*\)-\([0-9.]*\) GB\/s$/\1 \2 \3 \4 \5/p' <<<"$line")
[ -n "${bhi:-}" ] || fail "per-rep line unreadable"
bw=$(sed -n 's/^baseline: read \([0-9.]*\) GB\/s.*/\1/p' <<<"$out")
[ -n "$bw" ] || fail "no baseline"
awk -v m="$med" -v l="$lo" -v h="$hi" -v bl="$blo" -v bh="$bhi" -v b="$bw" \
    'BEGIN {exit !(l >= 0 && l <= m && m <= h && bl > 0 && bl <= bh && bh <= b + 0.005)}' ||
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
# beyond the caches: 4 layers of hidden 1024 and intermediate 4096, 151 MB of bf16 weights per token
"$kvwire" gen-model --arch qwen3 --seed 4 --layers 4 --hidden 1024 --heads 8 --kv-heads 8 --head-dim 128 \
    --intermediate 4096 --vocab 8192 --tokenizer "$src/models/tokenizers/qwen3" --out "$tmp/big" >/dev/null 2>&1 ||
    fail "gen-model (big)"
out=$("$kvwire" bench model --model "$tmp/big" --threads 2 --prompt-len 4 --decode 8 --reps 2 --bw-mib 256) ||
    fail "exit $? (big)"
llc=$(cat /sys/devices/system/cpu/cpu0/cache/index3/size 2>/dev/null || echo 0K)
if [ "${llc%K}" -lt 36864 ]; then # up to 2 x 36 MiB of L3 for 2 threads: 151 MB is more than twice that
    ! grep -q '^note: ' <<<"$out" || fail "the 151 MB model is noted as held by the caches"
fi
check_bound
"$kvwire" bench model --model "$tmp/m" --bw-mib 0 >/dev/null 2>&1; [ $? -eq 2 ] || fail "--bw-mib 0 is a usage error"
echo ok
