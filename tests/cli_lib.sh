# cli_lib.sh: the preamble the command-line test scripts share, sourced as
#   . "$(dirname "$0")/../cli_lib.sh" "$@"
# with the script's arguments (kvwire binary, source dir, build dir). Sets kvwire, src and build, works in a fresh
# temporary folder removed on exit, stops at the first failing command, and defines fail MESSAGE and
# field KEY FILE (the value of the first "KEY: value" line of FILE), real_model NAME, wait_ready FILE PID,
# tiny_c2c_models, rscore_models (rscore_run, stable) and the byte-cap helpers budget_word, budget_kept, dumped,
# budget_check_ends and budget_check_minimum (below).
set -euo pipefail
kvwire=$1
src=$2
build=${3:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
fail() { echo "FAIL: $*"; exit 1; }
# real_model NAME: model = the path `kvwire fetch-model NAME` prints, or exit 77 (skipped) when it cannot be downloaded.
real_model() {
    local rc=0
    model=$("$kvwire" fetch-model "$1") || rc=$?
    if [ $rc -eq 3 ]; then
        echo "SKIP: $1 could not be downloaded (offline or no pip)"
        exit 77
    fi
    [ $rc -eq 0 ] || fail "fetch-model $1 exit $rc"
}
field() { grep "^$1: " "$2" | head -1 | sed "s/^$1: //"; }
# wait_ready FILE PID: waits up to 60 s for a daemon's --runtime.ready_file FILE, or until PID exits; 0 if FILE was
# written
wait_ready() {
    for _ in $(seq 600); do
        [ -s "$1" ] && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    [ -s "$1" ]
}
# tiny_c2c_models: a tiny C2C trio in ./recv (qwen3, 3 layers), ./shar (qwen2, 2 layers) and ./fuser (sharer layer 1's
# receiver layer closed); gen-fuser's report goes to ./gates.txt.
tiny_c2c_models() {
    "$kvwire" gen-model --arch qwen3 --preset tiny --layers 3 --seed 1 --tokenizer "$src/models/tokenizers/qwen3" \
        --out recv >/dev/null
    "$kvwire" gen-model --arch qwen2 --preset tiny --layers 2 --seed 2 --tokenizer "$src/models/tokenizers/qwen3" \
        --out shar >/dev/null
    "$kvwire" gen-fuser --receiver recv --sharer shar --out fuser --seed 3 --hidden 64 --intermediate 96 \
        --closed-layers 1 --k-only-layers "" --v-only-layers "" >gates.txt
}
# rscore_models: the receiver-aware selections' trio in ./recv (qwen3, 3 layers), ./shar (qwen2, 2 layers), both
# untied, and ./fuser (gen-fuser's default gates: sharer layer 0 feeds two receiver layers); rscore_run ARGS: kvwire
# c2c on them with a fixed prompt and 6 new tokens; stable FILE: its output without the timings.
rscore_models() {
    local tok=$src/models/tokenizers/qwen3
    "$kvwire" gen-model --arch qwen3 --preset tiny --layers 3 --seed 1 --tied 0 --tokenizer "$tok" --out recv >/dev/null
    "$kvwire" gen-model --arch qwen2 --preset tiny --layers 2 --seed 2 --tied 0 --tokenizer "$tok" --out shar >/dev/null
    "$kvwire" gen-fuser --receiver recv --sharer shar --out fuser --seed 3 --hidden 64 --intermediate 96 >/dev/null
}
rscore_run() {
    "$kvwire" c2c --receiver recv --sharer shar --fuser fuser --max-new-tokens 6 \
        --prompt "Name three colours of the rainbow and say which one is in the middle." "$@"
}
stable() { grep -v '^timing_ms' "$1"; }
# budget_word FILE WORD: the word after WORD on kvwire c2c's "budget: cap C used U slack S min M" line.
budget_word() { field budget "$1" | tr ' ' '\n' | grep -A1 -x "$2" | tail -1; }
# budget_kept FILE: the kept tokens of the "budget_tokens: candidates N dropped D CODEC n ..." line (every codec's
# count), after checking that they and the dropped ones add up to the candidates.
budget_kept() {
    local h i kept=0
    read -r -a h <<<"$(field budget_tokens "$1")"
    [ "${h[0]}" = candidates ] && [ "${h[2]}" = dropped ] || fail "$1: budget_tokens line: ${h[*]}" >&2
    for ((i = 5; i < ${#h[@]}; i += 2)); do kept=$((kept + h[i])); done
    [ $((kept + h[3])) = "${h[1]}" ] || fail "$1: histogram ${h[*]} does not add up" >&2
    echo "$kept"
}
# dumped PREFIX: the sum of the dumped blobs PREFIX.*.kvw, each checked by kvwire inspect.
dumped() {
    local total=0 f
    for f in "$1".*.kvw; do
        "$kvwire" inspect "$f" >/dev/null || fail "inspect rejected $f" >&2
        total=$((total + $(stat -c %s "$f")))
    done
    echo "$total"
}
# budget_check_ends GENEROUS TIGHT: kvwire c2c records of a generous cap (nothing dropped, all lossless bf16 from a
# bf16 cache, the answer of `run --wire bf16`) and of a tight one (more than half the candidates dropped). The script
# defines run (kvwire c2c with its models and item).
budget_check_ends() {
    local h
    grep -Eq '^budget_tokens: candidates ([0-9]+) dropped 0 int4 0 int6 0 int8 0 bf16 \1$' "$1" \
        || fail "a generous cap: $(field budget_tokens "$1")"
    [ "$(field answer "$1")" = "$(field answer <(run --wire bf16))" ] || fail "bf16 for all != --wire bf16"
    read -r -a h <<<"$(field budget_tokens "$2")"
    [ "${h[3]}" -gt $((h[1] / 2)) ] || fail "$2 kept too much: ${h[*]}"
}
# budget_check_minimum MIN BELOW: the minimum cap a record named (above 100, below BELOW) is accepted and kept, one
# byte less is refused with the number in the reason.
budget_check_minimum() {
    local min=$1
    [ "$min" -gt 100 ] && [ "$min" -lt "$2" ] || fail "min $min"
    run --budget-bytes "$min" --wire-dump m >cm.txt || fail "the minimum cap was refused"
    [ "$(dumped m)" -le "$min" ] || fail "the minimum cap was exceeded"
    set +e
    run --budget-bytes $((min - 1)) >/dev/null 2>err.txt
    [ $? -eq 1 ] || fail "a cap below the minimum was accepted"
    grep -q "need at least $min bytes" err.txt || fail "no minimum in the refusal: $(cat err.txt)"
    set -e
}
