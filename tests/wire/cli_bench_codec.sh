#!/usr/bin/env bash
# cli_bench_codec.sh KVWIRE SOURCE_DIR BUILD_DIR: `kvwire bench codec` on tiny shapes. It reports the codec kernels'
# ISA: KW_CPU_ISA=scalar (what scripts/test.sh sets for its scalar rerun) makes the default (auto) choice the scalar
# path, KW_CPU_ISA=avx2 at most AVX2; --isa still forces a path whatever KW_CPU_ISA says. Its int8 and int4 per-token
# rows with log8 scales run and take fewer bytes than the f16 ones (one scale byte per row instead of two), its
# rotated (@rot) rows run, --clock cpu (thread CPU time, for a shared machine) says so in its header, and --only with
# a trailing $ selects one row by its exact name.
. "$(dirname "$0")/../cli_lib.sh" "$@"
# isa [ARGS]: the ISA a tiny `bench codec` run names in its header line
isa() {
    "$kvwire" bench codec --layers 1 --heads 1 --dim 32 --tokens 16 --reps 1 --only int8 "$@" |
        sed -n 's/.*, isa \([a-z0-9]*\),.*/\1/p'
}
best=$(unset KW_CPU_ISA; isa) # the best the machine has
[ -n "$best" ] || fail "bench codec names no isa"
[ "$(KW_CPU_ISA=scalar isa)" = scalar ] || fail "KW_CPU_ISA=scalar: isa $(KW_CPU_ISA=scalar isa)"
want=avx2
[ "$best" = scalar ] && want=scalar
[ "$(KW_CPU_ISA=avx2 isa)" = "$want" ] || fail "KW_CPU_ISA=avx2: isa $(KW_CPU_ISA=avx2 isa), best $best"
[ "$(KW_CPU_ISA=scalar isa --isa "$best")" = "$best" ] || fail "--isa $best under KW_CPU_ISA=scalar"
"$kvwire" bench codec --layers 2 --heads 2 --dim 32 --tokens 64 --reps 1 --only token >rows.txt
for c in int8 int4; do
    log8=$(awk -v n="$c token log8" '$0 ~ "^" n " +[0-9]" { print $(NF - 3) }' rows.txt)
    f16=$(awk -v n="$c token f16" '$0 ~ "^" n " +[0-9]" { print $(NF - 3) }' rows.txt)
    if [ -z "$log8" ] || [ -z "$f16" ]; then fail "no $c token log8 / f16 row: $(cat rows.txt)"; fi
    [ "$log8" -lt "$f16" ] || fail "$c log8 blob $log8 bytes, not below f16's $f16"
    # the rotated rows (v1.1 Hadamard rotation) run, with the plain row's size give or take the v1.1 header's bytes
    rot=$(awk -v n="$c token f16 @rot" 'index($0, n) == 1 { print $(NF - 3) }' rows.txt)
    [ -n "$rot" ] || fail "no $c token f16 @rot row: $(cat rows.txt)"
    if [ "$rot" -lt "$f16" ] || [ "$rot" -gt $((f16 + 64)) ]; then fail "$c @rot blob $rot bytes, f16 $f16"; fi
done
"$kvwire" bench codec --layers 1 --heads 1 --dim 32 --tokens 16 --reps 1 --only "int8 token f16" --clock cpu |
    grep -q "best of 1, thread CPU time" || fail "--clock cpu: the header does not say thread CPU time"
# --only NAME$ keeps that one row; without the $ every row whose name holds it
rows() { "$kvwire" bench codec --layers 1 --heads 1 --dim 32 --tokens 16 --reps 1 --only "$1" | grep -c '^int8 token f16'; }
[ "$(rows 'int8 token f16$')" = 1 ] || fail "--only 'int8 token f16\$': $(rows 'int8 token f16$') rows"
[ "$(rows 'int8 token f16')" -gt 1 ] || fail "--only 'int8 token f16': $(rows 'int8 token f16') rows"
# a head shorter than a row's groups: that row is skipped with a note, the others run (it exited 1 at the nf4 row)
"$kvwire" bench codec --layers 1 --heads 1 --dim 16 --tokens 8 --reps 1 >all16.txt || fail "--dim 16 failed"
grep -q '^nf4 group64 f16 *(not for head_dim 16)' all16.txt || fail "--dim 16: no note for nf4: $(cat all16.txt)"
grep -q '^e5m2 token f16 *[0-9]' all16.txt || fail "--dim 16: the rows after nf4 did not run: $(cat all16.txt)"
if "$kvwire" bench codec --layers 1 --heads 1 --dim 32 --tokens 16 --reps 1 --clock sundial >/dev/null 2>&1; then
    fail "--clock sundial accepted"
fi
echo ok
