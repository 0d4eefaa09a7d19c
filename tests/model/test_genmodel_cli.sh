#!/usr/bin/env bash
# test_genmodel_cli.sh: `kvwire gen-model` from the command line: the same options and seed give identical folders,
# another seed other weights, overrides reach config.json, tokenizer files are copied, nested output folders are
# created, and every bad invocation exits 2 with a message (never a partial model).
# Arguments: kvwire binary, source dir, build dir.
set -euo pipefail
kvwire=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

grep -q '^usage: kvwire gen-model' <<<"$("$kvwire" gen-model --help)" || fail "--help"

small=(--arch qwen3 --vocab 256 --layers 3 --hidden 32 --heads 4 --kv-heads 1 --head-dim 16 --intermediate 40)
"$kvwire" gen-model "${small[@]}" --seed 9 --out "$tmp/a" >/dev/null 2>&1
"$kvwire" gen-model "${small[@]}" --seed 9 --out "$tmp/nested/deeper/b" --tokenizer "$src/models/tokenizers/qwen3" \
    >/dev/null 2>&1
"$kvwire" gen-model "${small[@]}" --seed 10 --out "$tmp/c" >/dev/null 2>&1
for f in config.json generation_config.json model.safetensors; do
    cmp -s "$tmp/a/$f" "$tmp/nested/deeper/b/$f" || fail "$f differs between two runs with seed 9"
done
cmp -s "$tmp/a/config.json" "$tmp/c/config.json" || fail "config.json depends on the seed"
cmp -s "$tmp/a/model.safetensors" "$tmp/c/model.safetensors" && fail "seeds 9 and 10 gave the same weights"
cmp -s "$tmp/nested/deeper/b/tokenizer.json" "$src/models/tokenizers/qwen3/tokenizer.json" || fail "tokenizer.json copy"
cmp -s "$tmp/nested/deeper/b/tokenizer_config.json" "$src/models/tokenizers/qwen3/tokenizer_config.json" ||
    fail "tokenizer_config.json copy"
grep -q '"num_hidden_layers": 3,' "$tmp/a/config.json" || fail "--layers not in config.json"
grep -q '"head_dim": 16,' "$tmp/a/config.json" || fail "--head-dim not in config.json"
grep -q '"num_key_value_heads": 1,' "$tmp/a/config.json" || fail "--kv-heads not in config.json"
grep -q '"vocab_size": 256$' "$tmp/a/config.json" || fail "--vocab not in config.json"
grep -q '"eos_token_id": 255,' "$tmp/a/config.json" || fail "eos not moved inside the vocabulary"
"$kvwire" gen-model --arch llama --vocab 300 --dtype f16 --tied 1 --seed 1 --out "$tmp/l" >/dev/null 2>&1
grep -q '"rope_type": "llama3"' "$tmp/l/config.json" || fail "llama3 rope scaling"
grep -q '"torch_dtype": "float16",' "$tmp/l/config.json" || fail "--dtype f16"
grep -q '"tie_word_embeddings": true,' "$tmp/l/config.json" || fail "--tied 1"
# Gemma3: the preset's window and pattern, both overridable; the pattern follows --layers
"$kvwire" gen-model --arch gemma3 --vocab 512 --layers 4 --seed 1 --out "$tmp/g" >/dev/null 2>&1
grep -q '"model_type": "gemma3_text",' "$tmp/g/config.json" || fail "gemma3 model_type"
grep -q '"sliding_window": 16,' "$tmp/g/config.json" || fail "gemma3 tiny window"
grep -q '"sliding_window_pattern": 2,' "$tmp/g/config.json" || fail "gemma3 tiny pattern"
[ "$(grep -c '"full_attention"' "$tmp/g/config.json")" = 2 ] || fail "4 layers with pattern 2: two global"
"$kvwire" gen-model --arch gemma3 --vocab 512 --layers 6 --sliding-window 5 --sliding-pattern 3 --head-dim 8 \
    --seed 1 --out "$tmp/g2" >/dev/null 2>&1
grep -q '"sliding_window": 5,' "$tmp/g2/config.json" || fail "--sliding-window"
grep -q '"sliding_window_pattern": 3,' "$tmp/g2/config.json" || fail "--sliding-pattern"
grep -q '"query_pre_attn_scalar": 8.0,' "$tmp/g2/config.json" || fail "query_pre_attn_scalar follows --head-dim"

bad() {
    local want=$1
    shift
    set +e
    "$kvwire" gen-model "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    set -e
    [ "$rc" = "$want" ] || fail "gen-model $* exited $rc, want $want: $(cat "$tmp/err")"
    [ -s "$tmp/err" ] || fail "gen-model $* printed no reason"
    [ ! -e "$tmp/bad/model.safetensors" ] || fail "gen-model $* left a model behind"
}
bad 2 --arch qwen3
bad 2 --arch qwen4 --out "$tmp/bad"
bad 2 --arch qwen3 --preset huge --out "$tmp/bad"
bad 2 --preset tiny --out "$tmp/bad"
bad 2 --arch llama --preset qwen3-0.6b --out "$tmp/bad"
bad 2 --arch qwen3 --dtype f64 --out "$tmp/bad"
bad 2 --arch qwen3 --layers 0 --out "$tmp/bad"
bad 2 --arch qwen3 --seed -1 --out "$tmp/bad"
bad 2 --arch qwen3 --seed 12x --out "$tmp/bad"
bad 2 --arch qwen3 --kv-heads 3 --out "$tmp/bad"
bad 2 --arch qwen2 --heads 3 --out "$tmp/bad"
bad 2 --arch qwen3 --head-dim 15 --out "$tmp/bad"
bad 2 --arch qwen3 --frobnicate 1 --out "$tmp/bad"
bad 2 --arch qwen3 --out
bad 1 --arch qwen3 --vocab 64 --tokenizer "$tmp/nowhere" --out "$tmp/bad"
bad 2 --arch qwen3 --sliding-window 8 --out "$tmp/bad"
bad 2 --arch gemma3 --sliding-pattern 0 --out "$tmp/bad"
bad 2 --arch gemma3 --preset qwen3-0.6b --out "$tmp/bad"
echo "gen-model cli: ok"
