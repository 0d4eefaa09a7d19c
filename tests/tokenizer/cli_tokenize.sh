#!/usr/bin/env bash
# cli_tokenize.sh: `kvwire tokenize` end to end. The shared corpus through the three tokenizers must give exactly the ids
# HF gives (cli_<name>.ids, written by tools/make_tokenizer_fixtures.py) and decode back to HF's decode
# (cli_<name>.decoded); bad lines must fail with status 1 and name the line; bad options with status 2.
# Arguments: kvwire binary, source dir, build dir.
set -euo pipefail
kvwire=$1
src=$2
data=$src/tests/data/tokenizer
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for name in qwen3 llama3 gemma3; do
    tok=$src/models/tokenizers/$name
    "$kvwire" tokenize --tokenizer "$tok" <"$data/corpus.jsonl" >"$tmp/$name.ids"
    diff -u "$data/cli_$name.ids" "$tmp/$name.ids"
    "$kvwire" tokenize --tokenizer "$tok" --decode <"$tmp/$name.ids" >"$tmp/$name.decoded"
    diff -u "$data/cli_$name.decoded" "$tmp/$name.decoded"
    [ "$(wc -l <"$tmp/$name.ids")" -eq "$(wc -l <"$data/corpus.jsonl")" ]
done

qwen=$src/models/tokenizers/qwen3
# The file itself may be named instead of its folder; \u escapes (NUL, surrogate pairs) are decoded, not truncated
# (ids from HF: "<|im_start|>user\x00\U0001F600").
printf '%s\n' '"<|im_start|>user\u0000\ud83d\ude00"' | "$kvwire" tokenize --tokenizer "$qwen/tokenizer.json" >"$tmp/esc"
printf '[151644,872,188,141334]\n' | diff -u - "$tmp/esc"
# Special tokens: kept by default, dropped with --skip-special; <think> is added but not special.
printf '[151644,872,198,151667,151645]\n' | "$kvwire" tokenize --tokenizer "$qwen" --decode >"$tmp/d1"
printf '"<|im_start|>user\\n<think><|im_end|>"\n' | diff -u - "$tmp/d1"
printf '[151644,872,198,151667,151645]\n' | "$kvwire" tokenize --tokenizer "$qwen" --decode --skip-special >"$tmp/d2"
printf '"user\\n<think>"\n' | diff -u - "$tmp/d2"
# One token holding half a character decodes to U+FFFD.
printf '[100]\n[]\n' | "$kvwire" tokenize --tokenizer "$qwen" --decode >"$tmp/d3"
printf '"\xef\xbf\xbd"\n""\n' | diff -u - "$tmp/d3"

expect_fail() { # mode, bad line
    local mode=$1 bad=$2 rc
    set +e
    if [ "$mode" = decode ]; then
        printf '[9707]\n%s\n[9707]\n' "$bad" | "$kvwire" tokenize --tokenizer "$qwen" --decode >"$tmp/out" 2>"$tmp/err"
    else
        printf '"Hello"\n%s\n"Hello"\n' "$bad" | "$kvwire" tokenize --tokenizer "$qwen" >"$tmp/out" 2>"$tmp/err"
    fi
    rc=$?
    set -e
    if [ "$rc" -ne 1 ]; then echo "expected exit 1 for $mode line: $bad (got $rc)"; exit 1; fi
    grep -q "line 2" "$tmp/err" || { echo "error does not name line 2: $(cat "$tmp/err")"; exit 1; }
    [ "$(wc -l <"$tmp/out")" -eq 1 ] || { echo "the line before the bad one was not written"; exit 1; }
}
for bad in 'not json' '"unterminated' '"lone \ud800"' '"a" "b"' '"\q"' '[1,2]' "\"$(printf 'raw\ttab')\"" \
    "$(printf '"\xff\xfe"')"; do
    expect_fail encode "$bad"
done
for bad in '"text"' '[1,' '[151669]' '[-1]' '[1.5]' '[99999999999]' '{"a":1}'; do
    expect_fail decode "$bad"
done

# Usage errors: status 2.
for args in "" "--tokenizer" "--tokenizer $qwen --bogus" "--tokenizer $qwen --skip-special" \
    "--tokenizer $qwen --pieces --decode"; do
    set +e
    # shellcheck disable=SC2086
    "$kvwire" tokenize $args </dev/null >/dev/null 2>&1
    rc=$?
    set -e
    [ "$rc" -eq 2 ] || { echo "expected exit 2 for args '$args' (got $rc)"; exit 1; }
done
# A missing tokenizer: status 1 with the path in the message.
set +e
"$kvwire" tokenize --tokenizer "$tmp/nowhere" </dev/null 2>"$tmp/err"
rc=$?
set -e
[ "$rc" -eq 1 ] && grep -q nowhere "$tmp/err"
echo ok
