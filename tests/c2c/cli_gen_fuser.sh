#!/usr/bin/env bash
# cli_gen_fuser.sh: `kvwire gen-fuser` and `kvwire convert-fuser` end to end on models made by `kvwire gen-model`:
# deterministic output, gate options, the released layout, alignment flag for a Llama sharer, conversion both ways,
# and clean refusals of bad options and inputs. (tools/check_gen_fuser.py checks the same files with torch.)
# Arguments: kvwire binary, source dir, build dir.
set -euo pipefail
kvwire=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

"$kvwire" gen-model --arch qwen3 --out recv --layers 4 --vocab 1000 --seed 1 >/dev/null 2>&1
"$kvwire" gen-model --arch qwen2 --out shar --layers 3 --vocab 1000 --seed 2 >/dev/null 2>&1
"$kvwire" gen-model --arch llama --out llama --layers 5 --vocab 1000 --seed 3 >/dev/null 2>&1

out=$("$kvwire" gen-fuser --receiver recv --sharer shar --out f1 --seed 7 --hidden 32 --intermediate 24)
grep -q "gates: 0:open 1:open 2:closed 3:k-only" <<<"$out"
"$kvwire" gen-fuser --receiver recv --sharer shar --out f2 --seed 7 --hidden 32 --intermediate 24 >/dev/null
diff -r f1 f2 # same inputs and seed: same bytes
"$kvwire" gen-fuser --receiver recv --sharer shar --out f3 --seed 8 --hidden 32 --intermediate 24 >/dev/null
! cmp -s f1/final/projector_0.pt f3/final/projector_0.pt
for f in config.json final/projector_config.json final/projector_0.json final/projector_3.pt; do test -s "f1/$f"; done
test "$(cat f1/final/projector_config.json)" = '{"0": {"1": {"0": [[0, 0]], "1": [[0, 1]], "2": [[1, 2]], "3": [[2, 3]]}}}'
grep -q '"source_dim": 16' f1/final/projector_0.json
grep -q '"target_dim": 32' f1/final/projector_0.json
grep -q '"is_do_alignment": false' f1/config.json

out=$("$kvwire" gen-fuser --receiver recv --sharer llama --out fl --seed 1 --hidden 32 --intermediate 24 \
    --closed-layers 0,2 --k-only-layers 1 --v-only-layers "" --dtype f32 --num-layers 4)
grep -q "gates: 0:closed 1:k-only 2:closed 3:open" <<<"$out"
grep -q '"is_do_alignment": true' fl/config.json
grep -q '"value": "float32"' fl/final/projector_1.json

"$kvwire" convert-fuser --in f1 --out f1st >/dev/null
test -s f1st/final/projector_3.safetensors
test ! -e f1st/final/projector_3.pt
cmp f1/final/projector_config.json f1st/final/projector_config.json
"$kvwire" convert-fuser --in f1st --out f1pt --format pt >/dev/null
test -s f1pt/final/projector_0.pt
"$kvwire" convert-fuser --in fl --out flst >/dev/null

expect() { # expect STATUS command...
    local want=$1
    shift
    set +e
    "$@" >/dev/null 2>err.txt
    local rc=$?
    set -e
    if [ "$rc" -ne "$want" ]; then
        echo "expected exit $want, got $rc: $*"
        cat err.txt
        exit 1
    fi
    [ "$want" -eq 0 ] || test -s err.txt
}
expect 2 "$kvwire" gen-fuser --receiver recv --out x
expect 2 "$kvwire" gen-fuser --receiver recv --sharer shar --out x --closed-layers 4
expect 2 "$kvwire" gen-fuser --receiver recv --sharer shar --out x --closed-layers 1 --k-only-layers 1
expect 2 "$kvwire" gen-fuser --receiver recv --sharer shar --out x --dtype f16
expect 2 "$kvwire" gen-fuser --receiver recv --sharer shar --out x --num-layers 2
expect 2 "$kvwire" gen-fuser --receiver recv --sharer shar --out x --bogus 1
expect 1 "$kvwire" gen-fuser --receiver nowhere --sharer shar --out x
expect 2 "$kvwire" convert-fuser --in f1
expect 1 "$kvwire" convert-fuser --in f1 --out f1
expect 1 "$kvwire" convert-fuser --in recv --out y
rm f1/final/projector_2.json
expect 1 "$kvwire" convert-fuser --in f1 --out z
grep -q "projector_2.json" err.txt
echo ok
