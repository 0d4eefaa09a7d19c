#!/usr/bin/env bash
# cli_daemons_config.sh: the daemons' configuration (common/kw_cfg.h over each daemon's table): --help lists every key
# --print-config shows; the dump is a config file that loads back to the same dump; paths in a file are relative to
# the file, on the command line as given; a command-line override wins over the file wherever it stands; unknown keys
# and bad values stop the daemon with exit status 2 and the key's name; the example configs in deploy/config load.
. "$(dirname "$0")/../cli_lib.sh" "$@"
for d in sharer/sharerd receiver/receiverd; do
    bin=$build/$d
    name=$(basename "$d")
    "$bin" --help >help.txt
    grep -q "^usage: $name" help.txt || fail "$name --help has no usage line"
    "$bin" --print-config >dump.yaml
    # every key of the dump is documented in --help (list elements as LIST.N.KEY)
    grep -E '^[a-z_.]+:' dump.yaml | sed 's/:.*//' | while read -r key; do
        grep -q -- "--$key \|^  $key: a list" help.txt || fail "$name --help does not list $key"
    done
    # the dump loads back to itself
    "$bin" --config dump.yaml --print-config >dump2.yaml
    cmp -s dump.yaml dump2.yaml || fail "$name: --print-config does not load back to itself"
    # unknown keys and bad values: exit 2, naming the key
    set +e
    "$bin" --no.such.key=1 2>err.txt
    rc=$?
    set -e
    [ $rc = 2 ] && grep -q "no.such.key" err.txt || fail "$name: an unknown key gave $rc: $(cat err.txt)"
    # compute.weights: the modes of kvwire generate --weights, quantized by default
    grep -q '^compute.weights: "\?quantized"\?$' dump.yaml || fail "$name: compute.weights is not quantized by default"
    for w in f32 bf16 quantized quantized-int8 bf16-act; do
        "$bin" --compute.weights=$w --print-config | grep -q "^compute.weights: \"\?$w\"\?$" ||
            fail "$name: --compute.weights=$w not taken"
    done
    set +e
    "$bin" --compute.weights=int8 2>err.txt
    rc=$?
    set -e
    [ $rc = 2 ] && grep -q "compute.weights" err.txt || fail "$name: --compute.weights=int8 gave $rc: $(cat err.txt)"
done
# a start-up error stops the daemon (exit 1) with one line that names it once: its details already begin "NAME: "
for pair in "sharer/sharerd:no model configured" "receiver/receiverd:model.path is required"; do
    name=$(basename "${pair%%:*}")
    set +e
    "$build/${pair%%:*}" 2>err.txt
    rc=$?
    set -e
    [ $rc = 1 ] && grep -q "^$name: ${pair#*:}" err.txt || fail "$name with no model gave $rc: $(cat err.txt)"
    ! grep -q "$name: $name:" err.txt || fail "$name names itself twice: $(cat err.txt)"
done
# sharerd: paths relative to the file, overrides from the command line in any order
mkdir -p conf/sub
cat >conf/sub/s.yaml <<'YAML'
listen:
  port: 1234
models:
  - name: a
    path: ../models/a
  - name: b
    path: /abs/b
YAML
"$build/sharer/sharerd" --listen.port=99 --config conf/sub/s.yaml --models.1.name=bee --print-config >s.txt
grep -q '^listen.port: 99$' s.txt || fail "a command-line override before --config did not win"
grep -q 'path: "conf/sub/../models/a"' s.txt || fail "a relative path in a file is not relative to the file"
grep -q 'path: "/abs/b"' s.txt || fail "an absolute path changed"
grep -q 'name: "bee"' s.txt || fail "a list element override did not apply"
"$build/sharer/sharerd" --models.0.path=rel --models.0.name=x --print-config | grep -q 'path: "rel"' ||
    fail "a command-line path is not taken as given"
set +e
"$build/sharer/sharerd" --listen.port=70000 2>err.txt
rc=$?
set -e
[ $rc = 2 ] && grep -q "listen.port" err.txt || fail "an out-of-range port gave $rc: $(cat err.txt)"
set +e
"$build/receiver/receiverd" --defaults.mode=teleport 2>err.txt
rc=$?
set -e
[ $rc = 2 ] && grep -q "defaults.mode" err.txt || fail "a bad choice gave $rc: $(cat err.txt)"
# the example configs load (their models need not exist to print them)
"$build/sharer/sharerd" --config "$src/deploy/config/sharerd.tiny.yaml" --print-config | grep -q 'tiny-qwen2' ||
    fail "deploy/config/sharerd.tiny.yaml does not load"
"$build/receiver/receiverd" --config "$src/deploy/config/receiverd.tiny.yaml" --print-config | grep -q 'tiny-fuser' ||
    fail "deploy/config/receiverd.tiny.yaml does not load"
# cache.layers (per-layer cache codecs): a file's `cache: {dtype: int6, layers: "0:int8,-1:int8"}` prints back; with a
# model, a good list starts the daemon and each bad one stops it at start (exit 1) with the reason.
cat >c.yaml <<'YAML'
cache:
  dtype: int6
  page_tokens: 16
  layers: "0:int8,-1:int8"
YAML
"$build/receiver/receiverd" --config c.yaml --print-config >c.txt
grep -q '^cache.layers: "0:int8,-1:int8"$' c.txt || fail "cache.layers does not print back: $(grep cache c.txt)"
"$kvwire" gen-model --arch qwen3 --preset tiny --layers 3 --seed 1 --tokenizer "$src/models/tokenizers/qwen3" \
    --out recv >/dev/null
rd=("$build/receiver/receiverd" --model.path=recv --model.name=r --http.port=0 --compute.threads=1)
"${rd[@]}" --config c.yaml --runtime.ready_file=ready 2>good.txt &
pid=$!
for _ in $(seq 300); do [ -s ready ] || ! kill -0 $pid 2>/dev/null && break; sleep 0.1; done
[ -s ready ] || fail "receiverd did not start with cache.layers: $(cat good.txt)"
kill -TERM $pid
wait $pid || true
for bad in "int6:3:int8:layer 3 is out of range" "int6:-4:int8:layer -4 is out of range" \
    "int6:0:int9:unknown layer codec" "int6:0:int8,-3:int4:given a codec twice" "int6:0-int8:is not LAYER" \
    "f32:0:int8:cache.layers needs cache.dtype" "auto:1:bf16:cache.layers needs cache.dtype"; do
    dtype=${bad%%:*} rest=${bad#*:}
    layers=${rest%:*} why=${rest##*:}
    set +e
    "${rd[@]}" --cache.dtype="$dtype" --cache.layers="$layers" 2>err.txt
    rc=$?
    set -e
    [ $rc = 1 ] && grep -q -- "$why" err.txt || fail "cache.layers $layers over $dtype gave $rc: $(cat err.txt)"
done
echo "daemon configs: ok"
