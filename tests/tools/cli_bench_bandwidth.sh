#!/usr/bin/env bash
# cli_bench_bandwidth.sh KVWIRE SRC BUILD: `kvwire bench bandwidth` on a small buffer: one line per read pattern (1..2
# threads x 1 or 4 streams x 64-bit sums, AVX2 loads and non-temporal loads where the CPU has AVX2, AVX-512 loads where
# it has AVX-512F), every figure positive, and the bound is the largest of them (the benchmarks compare kernels against
# it, so no pattern may beat it). The buffer is mapped as packed weights are: its line says how much of it is on 2 MiB
# pages, none with KW_HUGEPAGES=0.
set -u
kvwire=$1
fail() { echo "FAIL: $*"; echo "$out"; exit 1; }
out=$("$kvwire" bench bandwidth --threads 2 --mib 8 --reps 1) || fail "exit $?"
patterns=$(grep -c '^  read ' <<<"$out")
if grep -qw avx512f /proc/cpuinfo; then want=16; elif grep -qw avx2 /proc/cpuinfo; then want=12; else want=4; fi
[ "$patterns" = "$want" ] || fail "$patterns patterns, expected $want"
best=$(awk '/^  read / {v = $(NF - 1); if (v + 0 <= 0) bad = 1; if (v + 0 > m) m = v + 0} END {if (bad) print "bad"; else printf "%.2f", m}' <<<"$out")
[ "$best" != bad ] || fail "a pattern read nothing"
bound=$(sed -n 's/^bound: \([0-9.]*\) GB\/s.*/\1/p' <<<"$out")
[ "$bound" = "$best" ] || fail "bound $bound is not the best pattern $best"
# the buffer line needs smaps' AnonHugePages (a kernel with THP); KW_HUGEPAGES=0 leaves the buffer on 4 KiB pages only
# where THP is "madvise" (the Debian default: memory gets 2 MiB pages when asked; "always" gives them anyway)
if grep -q '^AnonHugePages:' /proc/self/smaps 2>/dev/null; then
    grep -q '^  (buffer 8 MiB, [0-9]* MiB of it on 2 MiB pages)$' <<<"$out" || fail "no buffer line"
    if grep -q '\[madvise\]' /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null; then
        out=$(KW_HUGEPAGES=0 "$kvwire" bench bandwidth --threads 1 --mib 8 --reps 1) || fail "exit $? (KW_HUGEPAGES=0)"
        grep -q '^  (buffer 8 MiB, 0 MiB of it on 2 MiB pages: KW_HUGEPAGES=0)$' <<<"$out" ||
            fail "KW_HUGEPAGES=0 buffer line"
    fi
fi
"$kvwire" bench bandwidth --mib 0 >/dev/null 2>&1; [ $? -eq 2 ] || fail "--mib 0 is a usage error"
echo ok
