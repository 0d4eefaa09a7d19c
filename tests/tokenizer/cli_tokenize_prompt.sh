#!/usr/bin/env bash
# cli_tokenize_prompt.sh: `kvwire tokenize --bos` and `--chat` give a model's prompt ids as kvstats builds them. Tiny
# random Llama and Qwen3 folders made here with the shipped tokenizers: --bos puts BOS before the text's ids where the
# model's raw prompts have it (Llama-3: yes, Qwen3: no); --chat gives the ids of the model's chat template text with
# one user turn and the generation prompt (the template's own BOS, once), the prompt length kvstats --chat counts;
# bad combinations fail with status 2, a tokenizer without a model configuration and a NUL in a chat turn with 1.
. "$(dirname "$0")/../cli_lib.sh" "$@"
text="The capital of France is"
ids() { "$kvwire" tokenize --tokenizer "$@"; }
for arch in llama qwen3; do
    case $arch in llama) tokdir=llama3 ;; *) tokdir=qwen3 ;; esac
    "$kvwire" gen-model --arch $arch --preset tiny --seed 7 --tokenizer "$src/models/tokenizers/$tokdir" \
        --out "m-$arch" >/dev/null
    plain=$(echo "\"$text\"" | ids "m-$arch")
    bos=$(echo "\"$text\"" | ids "m-$arch" --bos)
    case $arch in
    llama)
        [ "$bos" = "[128000,${plain#[}" ] || fail "llama --bos: $bos, the text's ids $plain"
        turn="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023"
        turn="$turn\\nToday Date: 03 Dec 2026\\n\\n<|eot_id|><|start_header_id|>user<|end_header_id|>\\n\\n$text"
        turn="$turn<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n"
        ;;
    *)
        [ "$bos" = "$plain" ] || fail "qwen3 --bos: $bos, the text's ids $plain (Qwen3 has no BOS)"
        turn="<|im_start|>user\\n$text<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n"
        ;;
    esac
    want=$(echo "\"$turn\"" | ids "m-$arch")
    got=$(echo "\"$text\"" | ids "m-$arch" --chat)
    [ "$got" = "$want" ] || fail "$arch --chat: $got, the rendered template's ids $want"
    echo "$text" >p.txt
    "$kvwire" kvstats --model "m-$arch" --prompts p.txt --chat --codec none --max-new-tokens 1 --threads 1 \
        >/dev/null 2>ks.txt || fail "$arch: kvwire kvstats failed: $(cat ks.txt)"
    n_stats=$(sed -n 's/^kvstats: prompt 1 (\([0-9]*\) tokens) done$/\1/p' ks.txt)
    n_got=$(awk -F, '{print NF}' <<<"$got")
    [ "$n_stats" = "$n_got" ] || fail "$arch --chat: $n_got ids, kvstats --chat ${n_stats:-no} prompt ids"
    echo "$arch: --bos $bos, --chat $n_got ids as kvstats"
done
for args in "--bos --chat" "--bos --decode" "--chat --pieces"; do
    set +e
    # shellcheck disable=SC2086
    ids m-qwen3 $args </dev/null >/dev/null 2>&1
    rc=$?
    set -e
    [ "$rc" -eq 2 ] || fail "expected exit 2 for '$args' (got $rc)"
done
set +e
echo '"x"' | ids "$src/models/tokenizers/qwen3" --bos >/dev/null 2>err.txt
rc1=$?
printf '"a\\u0000b"\n' | ids m-qwen3 --chat >/dev/null 2>err2.txt
rc2=$?
set -e
[ "$rc1" -eq 1 ] || fail "--bos with a bare tokenizer folder: exit $rc1, expected 1"
if [ "$rc2" -ne 1 ] || ! grep -q "line 1" err2.txt; then
    fail "--chat with U+0000: exit $rc2, expected 1: $(cat err2.txt)"
fi
echo "tokenize --bos and --chat: kvstats' prompt ids: ok"
