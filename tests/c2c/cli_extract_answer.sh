#!/usr/bin/env bash
# cli_extract_answer.sh: `kvwire extract-answer` over the reference vectors (one JSON string per line) must print
# exactly the reference function's outputs; malformed lines must fail with status 1 and name the line.
# Arguments: kvwire binary, source dir, build dir.
set -euo pipefail
kvwire=$1
data=$2/tests/data/c2c
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$kvwire" extract-answer <"$data/answer_inputs.jsonl" >"$tmp/out"
diff -u "$data/answer_expected.txt" "$tmp/out"
[ "$(wc -l <"$tmp/out")" -ge 82 ]

# \u0000 and surrogate pairs are decoded, not truncated.
printf '%s\n' '"x\u0000B"' '"\ud83d\ude00 C"' '"  The answer is d  "' '"  2+2=4 d "' | "$kvwire" extract-answer >"$tmp/out2"
printf 'B\nC\nD\nnull\n' | diff -u - "$tmp/out2"

for bad in 'not json' '"unterminated' '"lone \ud800"' '"a" "b"' '"\q"' "\"$(printf 'raw\ttab')\""; do
    set +e
    printf '"A"\n%s\n"B"\n' "$bad" | "$kvwire" extract-answer >"$tmp/out3" 2>"$tmp/err3"
    rc=$?
    set -e
    if [ "$rc" -ne 1 ]; then echo "expected exit 1 for line: $bad (got $rc)"; exit 1; fi
    grep -q "line 2" "$tmp/err3" || { echo "error does not name line 2: $(cat "$tmp/err3")"; exit 1; }
    printf 'A\n' | diff -u - "$tmp/out3"
done

# Arguments are refused (usage, status 2).
set +e
"$kvwire" extract-answer extra </dev/null 2>/dev/null
rc=$?
set -e
[ "$rc" -eq 2 ]
echo ok
