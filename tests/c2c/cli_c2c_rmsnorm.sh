#!/usr/bin/env bash
# cli_c2c_rmsnorm.sh: `kvwire c2c --rmsnorm-rounding`: the bf16 projector's RMSNorm rule is twice (torch <= 2.6, the
# default) or once (torch >= 2.7), as the projector_numerics line reports; an explicit twice gives the default's
# output; fp32 runs report fp32; a bad value or the option with --fp32 is refused with exit 2. (That the two rules
# compute what torch 2.6 and torch 2.15 compute is tests/c2c/test_projector_bf16.c.)
# Arguments: kvwire binary, source dir, build dir.
# shellcheck source=../cli_lib.sh
. "$(dirname "$0")/../cli_lib.sh" "$@"

"$kvwire" gen-model --arch qwen3 --preset tiny --layers 2 --seed 11 --tokenizer "$src/models/tokenizers/qwen3" \
    --out recv >/dev/null
"$kvwire" gen-model --arch qwen2 --preset tiny --layers 2 --seed 12 --tokenizer "$src/models/tokenizers/qwen3" \
    --out shar >/dev/null
"$kvwire" gen-fuser --receiver recv --sharer shar --out fuser --seed 13 --hidden 64 --intermediate 96 \
    --closed-layers "" --k-only-layers "" --v-only-layers "" >/dev/null
run() { "$kvwire" c2c --receiver recv --sharer shar --fuser fuser --threads 2 --prompt "Name a red planet." \
    --max-new-tokens 4 "$@"; }

run >default.txt
[ "$(field projector_numerics default.txt)" = bf16 ] || fail "default: $(field projector_numerics default.txt)"
run --rmsnorm-rounding twice >twice.txt
diff <(grep -v '^timing_ms' default.txt) <(grep -v '^timing_ms' twice.txt) || fail "twice is not the default"
run --rmsnorm-rounding once >once.txt
[ "$(field projector_numerics once.txt)" = bf16-fused-norm ] || fail "once: $(field projector_numerics once.txt)"
[ "$(field tokens_fused once.txt)" = "$(field tokens_fused default.txt)" ] || fail "once fused other tokens"
run --fp32 >f.txt
[ "$(field projector_numerics f.txt)" = fp32 ] || fail "fp32: $(field projector_numerics f.txt)"

set +e
run --rmsnorm-rounding thrice >/dev/null 2>err.txt; [ $? -eq 2 ] || fail "thrice accepted"
grep -q "thrice" err.txt || fail "no reason for thrice: $(cat err.txt)"
run --fp32 --rmsnorm-rounding once >/dev/null 2>err.txt; [ $? -eq 2 ] || fail "--fp32 with --rmsnorm-rounding accepted"
grep -q "not with --fp32" err.txt || fail "no reason for --fp32: $(cat err.txt)"
set -e
echo "cli_c2c_rmsnorm: ok"
