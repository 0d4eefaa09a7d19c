#!/usr/bin/env bash
# cli_daemons_bos.sh: a raw-text completion on receiverd starts with the model's BOS where the model's tokenizer adds
# one (Llama-3 and Gemma 3 folders: HF add_special_tokens; a Qwen3 folder has none), so receiverd, `kvwire generate`
# and `kvwire kvstats` see the same prompt ids: the prompt's token count and the generated ids of a receiver_only
# request equal `kvwire generate`'s. Tiny random models made here with the shipped tokenizers.
. "$(dirname "$0")/../cli_lib.sh" "$@"
pid=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT # a failed check stops receiverd too
kvwire=$build/tools/kvwire
prompt="The capital of France is"
for arch in llama gemma3 qwen3; do
    extra=()
    case $arch in llama) tokdir=llama3 ;; gemma3) tokdir=gemma3 extra=(--vocab 262208) ;; *) tokdir=$arch ;; esac
    "$kvwire" gen-model --arch $arch --preset tiny --seed 7 "${extra[@]}" --tokenizer "$src/models/tokenizers/$tokdir" \
        --out "m-$arch" >/dev/null
    "$kvwire" generate --model "m-$arch" --prompt "$prompt" --max-new-tokens 6 --threads 1 >gen.txt 2>/dev/null ||
        fail "$arch: kvwire generate failed"
    want_prompt=$(sed -n 's/^prompt_ids: \[\(.*\)\]$/\1/p' gen.txt | tr -d ' ')
    want_gen=$(sed -n 's/^generated_ids: \[\(.*\)\]$/\1/p' gen.txt | tr -d ' ')
    [ -n "$want_prompt" ] && [ -n "$want_gen" ] || fail "$arch: no ids in kvwire generate's output: $(cat gen.txt)"
    n_want=$(awk -F, '{print NF}' <<<"$want_prompt")
    n_text=$(echo "\"$prompt\"" | "$kvwire" tokenize --tokenizer "$src/models/tokenizers/$tokdir" |
        tr -d '[] ' | awk -F, 'NF {print NF; exit}')
    case $arch in qwen3) [ "$n_want" = "$n_text" ] || fail "$arch: $n_want prompt ids, the text has $n_text" ;;
    *) [ "$n_want" = $((n_text + 1)) ] || fail "$arch: $n_want prompt ids, expected the text's $n_text and BOS" ;; esac
    echo "$prompt" >p.txt # kvstats' prompt rows: its progress line counts them
    "$kvwire" kvstats --model "m-$arch" --prompts p.txt --codec none --max-new-tokens 1 --threads 1 >/dev/null 2>ks.txt ||
        fail "$arch: kvwire kvstats failed: $(cat ks.txt)"
    n_stats=$(sed -n 's/^kvstats: prompt 1 (\([0-9]*\) tokens) done$/\1/p' ks.txt)
    [ "$n_stats" = "$n_want" ] || fail "$arch: kvwire kvstats saw ${n_stats:-no} prompt ids, generate $n_want"
    rm -f ready
    printf 'http:\n  host: 127.0.0.1\n  port: 0\nmodel:\n  name: m-%s\n  path: m-%s\ncompute:\n  threads: 1\n' \
        $arch $arch >rd.yaml
    "$build/receiver/receiverd" --config rd.yaml --runtime.ready_file ready 2>log.txt &
    pid=$!
    wait_ready ready $pid || fail "$arch: receiverd did not start: $(cat log.txt)"
    port=$(sed -n 's/^port=//p' ready)
    curl -sS -o resp.json "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
        -d "{\"prompt\":\"$prompt\",\"max_tokens\":6,\"temperature\":0,\"kvwire\":{\"mode\":\"receiver_only\"}}" ||
        fail "$arch: the request failed"
    kill -TERM $pid
    wait $pid || fail "$arch: receiverd exited $? after SIGTERM: $(cat log.txt)"
    pid=
    got_prompt=$(grep -o '"prompt_tokens": *[0-9]*' resp.json | head -1 | grep -o '[0-9]*$')
    got_gen=$(grep -o '"completion_ids": *\[[0-9, ]*\]' resp.json | sed 's/.*\[//; s/\]//' | tr -d ' ')
    [ "$got_prompt" = "$n_want" ] || fail "$arch: receiverd counted $got_prompt prompt tokens, generate $n_want: $(cat resp.json)"
    [ "$got_gen" = "$want_gen" ] || fail "$arch: receiverd generated [$got_gen], generate [$want_gen]"
    echo "$arch: $n_want prompt ids, generated [$got_gen] on both"
done
echo "raw prompts: BOS as kvwire generate adds it: ok"
