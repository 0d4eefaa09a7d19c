#!/usr/bin/env bash
# cli_wire_isa.sh KVWIRE SOURCE_DIR BUILD_DIR: `kvwire bench codec` reports the codec kernels' ISA. KW_CPU_ISA=scalar
# (what scripts/test.sh sets for its scalar rerun) makes the default (auto) choice the scalar path, KW_CPU_ISA=avx2 at
# most AVX2; --isa still forces a path whatever KW_CPU_ISA says.
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
echo ok
