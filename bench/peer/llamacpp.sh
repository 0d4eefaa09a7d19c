#!/usr/bin/env bash
# llamacpp.sh [MODELS] [PAIRS]: kvwire against llama.cpp on this CPU (issue 10). Not part of CI. MODELS "none" runs
# only the greedy checks.
#
# 1. llama.cpp: the llama-cpp-python sdist (pip download --no-deps --no-binary :all:, version $LLAMACPP_PY_VERSION,
#    default 0.3.36, else the newest) is cached under ~/.cache/kvwire/peer and its vendored llama.cpp built out of tree
#    with cmake (CPU only, Release, -j2): llama-bench and llama-simple. Nothing of llama.cpp enters this repository.
# 2. Weights: one source per model, converted by `kvwire quantize` to BF16, Q8_0 and Q4_K_M GGUF files (which is also
#    the check that llama.cpp loads kvwire's output). MODELS (comma-separated, default "qwen3-0.6b,smollm2"):
#    qwen3-0.6b: a random Qwen3-0.6B-shaped bf16 folder from `kvwire gen-model` (vocabulary cut to SmolLM2's 49152
#    tokens, whose tokenizer.* metadata --vocab-from copies in, so llama.cpp has a vocabulary); smollm2: the real
#    SmolLM2-135M-Instruct GGUF of `kvwire fetch-model` (Q4_1, dequantized and re-quantized).
# 3. Speed: per model and format, PAIRS (default 3) rounds of kvwire then llama.cpp, back to back (A B A B), 2 threads
#    ($THREADS): prefill of 512 tokens, decode of 128 tokens at context 0 and at context 512. kvwire: `kvwire bench
#    model` (--weights bf16 for the BF16 file, the weights kept quantized otherwise); llama.cpp: llama-bench -p 512
#    -n 128 (depth 0) and -p 0 -n 128 -d 512. Prints each pair's kvwire/llama.cpp ratio and the median per metric,
#    and kvwire's decode against its bandwidth bound (`kvwire bench model` measures the bound, the best read
#    pattern of `kvwire bench bandwidth`, just before and just after the timed run, and keeps the better of the two:
#    a shared host's bandwidth moves from second to second).
# 4. Greedy: kvwire generate and llama-simple (greedy sampler) on the SmolLM2 Q8_0 file made by kvwire quantize, a
#    few prompts, 24 new tokens each; the continuations must be the same text. The same on an F32 file that kvwire
#    quantize made from a tiny random HF Llama folder (gen-model, SmolLM2's vocabulary; its llama3 RoPE scaling
#    dropped from config.json, which GGUF would carry as a rope_freqs tensor): the q/k row interleaving kvwire writes
#    must be the one llama.cpp's RoPE expects, or the random model's continuation differs at once. And kvwire on the
#    SmolLM2 Q8_0 file against llama.cpp on that file's weights written as F32 (see below).
# Environment: KVWIRE (default build/tools/kvwire), THREADS (2), LLAMACPP_PY_VERSION (0.3.36), PEER_CACHE,
# FORMATS (the formats of step 3, default "bf16 q8_0 q4_k_m"), KVWIRE_WEIGHTS (kvwire's --weights for the quantized
# files: quantized, the default, the f32 weights' logits; quantized-int8, Q4_K/Q6_K/Q8_0 with int8 activations as
# llama.cpp, Q8_0 in its 1.0625 bytes per weight).
# KVWIRE_BF16_WEIGHTS (kvwire's --weights for the BF16 file: bf16, the default, exact; bf16-act, bf16 activations and
# vdpbf16ps as llama.cpp on AVX-512 BF16).
set -euo pipefail
peer_name=llamacpp.sh
. "$(dirname "$0")/peer_lib.sh"
models=${1:-qwen3-0.6b,smollm2}
pairs=${2:-3}
mkdir -p "$cache"
peer_need_kvwire

# ---- llama.cpp from the llama-cpp-python sdist -------------------------------------------------------------------
sdist=$(ls "$cache"/llama_cpp_python-"$version".tar.gz 2>/dev/null || true)
if [ -z "$sdist" ]; then
    log "downloading llama-cpp-python==$version (sdist)"
    if ! pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$cache" >&2; then
        log "version $version is not available: taking the newest"
        pip download --no-deps --no-binary :all: llama-cpp-python -d "$cache" >&2
    fi
    sdist=$(ls -t "$cache"/llama_cpp_python-*.tar.gz | head -1)
fi
peer_set_version "$(basename "$sdist" .tar.gz | sed 's/^llama_cpp_python-//')"
[ -d "$llama_src" ] || tar -xzf "$sdist" -C "$cache"
if [ ! -x "$build/bin/llama-bench" ] || [ ! -x "$build/bin/llama-simple" ]; then
    log "building llama.cpp (vendored in llama-cpp-python $version): this takes a while on 2 cores"
    cmake -S "$llama_src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=OFF -DGGML_METAL=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON \
        >"$cache/cmake.log" 2>&1
    cmake --build "$build" -j2 --target llama-bench llama-simple >"$cache/build.log" 2>&1
fi
lbench="$build/bin/llama-bench"
lsimple="$build/bin/llama-simple"
commit=$(sed -n 's/.*LLAMA_COMMIT = "\(.*\)".*/\1/p' "$build/common/build-info.cpp" 2>/dev/null | head -1)

# ---- the weights ---------------------------------------------------------------------------------------------------
smollm2=$("$kvwire" fetch-model smollm2-135m-instruct)
mkdir -p "$mdir"
read -r -a formats <<<"${FORMATS:-bf16 q8_0 q4_k_m}"
make_files() { # model -> the three GGUF files in $mdir/<model>-<format>.gguf
    local m=$1 srcm
    case $m in
    smollm2) srcm=$smollm2 ;;
    qwen3-0.6b)
        srcm="$mdir/qwen3-0.6b-hf"
        [ -f "$srcm/config.json" ] ||
            "$kvwire" gen-model --preset qwen3-0.6b --vocab 49152 --dtype bf16 --seed 1 --out "$srcm" >/dev/null
        ;;
    *) log "unknown model $m (qwen3-0.6b, smollm2)"; exit 2 ;;
    esac
    for f in "${formats[@]}"; do
        [ -f "$mdir/$m-$f.gguf" ] && continue
        if [ "$m" = smollm2 ]; then
            "$kvwire" quantize --model "$srcm" --out "$mdir/$m-$f.gguf" --type "$f" >&2
        else
            "$kvwire" quantize --model "$srcm" --out "$mdir/$m-$f.gguf" --type "$f" --vocab-from "$smollm2" >&2
        fi
    done
}

# ---- one round of each tool ----------------------------------------------------------------------------------------
kvwire_run() { # file format prompt_len -> "prefill decode bound_ratio"
    local w=${KVWIRE_WEIGHTS:-quantized} out
    [ "$2" = bf16 ] && w=${KVWIRE_BF16_WEIGHTS:-bf16}
    out=$("$kvwire" bench model --model "$1" --weights "$w" --threads "$threads" --prompt-len "$3" --decode 128 \
        --reps 1)
    echo "$(echo "$out" | sed -n 's/^prefill: .* = \([0-9.]*\) tok\/s.*/\1/p')" \
        "$(echo "$out" | sed -n 's/^decode: .* = \([0-9.]*\) tok\/s.*/\1/p')" \
        "$(echo "$out" | sed -n 's/.*achieved\/bound median \([0-9.]*\),.*/\1/p')"
}
llama_run() { # file -> "prefill decode0 decode512" (tok/s, llama-bench's averages)
    local a b
    a=$("$lbench" -m "$1" -t "$threads" -p 512 -n 128 -d 0 -r 1 -o csv 2>/dev/null)
    b=$("$lbench" -m "$1" -t "$threads" -p 0 -n 128 -d 512 -r 1 -o csv 2>/dev/null)
    printf '%s\n%s\n' "$a" "$b" | python3 -c '
import csv, sys
pp = tg0 = tg512 = None
for row in csv.DictReader(sys.stdin):
    if row["n_prompt"] == "n_prompt":  # the header of the second run
        continue
    p, n, d, ts = int(row["n_prompt"]), int(row["n_gen"]), int(row["n_depth"]), row["avg_ts"]
    if p > 0 and n == 0: pp = ts
    elif n > 0 and d == 0: tg0 = ts
    elif n > 0: tg512 = ts
print(pp, tg0, tg512)'
}
ratio() { awk -v x="$1" -v y="$2" 'BEGIN {printf "%.3f", x / y}'; }

echo "# kvwire vs llama.cpp (llama-cpp-python $version, llama.cpp ${commit:-?}), $threads threads, $(date -u '+%F %H:%M UTC')"
echo "# CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); avx2: $(grep -qw avx2 /proc/cpuinfo && echo yes || echo no), avx512f: $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no); $(nproc) cores"
echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
model_list=()
[ "$models" = none ] || IFS=, read -r -a model_list <<<"$models"
for m in "${model_list[@]}"; do
    make_files "$m"
    for f in "${formats[@]}"; do
        file="$mdir/$m-$f.gguf"
        echo
        echo "## $m $f ($(du -m "$file" | cut -f1) MB)"
        printf '%-5s %9s %9s %9s %9s %9s %9s %9s %9s %9s %7s\n' pair kw_pp512 lc_pp512 kw_tg@0 lc_tg@0 kw_tg@512 \
            lc_tg@512 r_pp512 r_tg@0 r_tg@512 kw/bound
        rp=() r0=() r5=() rb=()
        for i in $(seq 1 "$pairs"); do
            read -r kp k5 _ <<<"$(kvwire_run "$file" "$f" 512)"
            read -r _ k0 kb <<<"$(kvwire_run "$file" "$f" 1)"
            read -r lp l0 l5 <<<"$(llama_run "$file")"
            rp+=("$(ratio "$kp" "$lp")")
            r0+=("$(ratio "$k0" "$l0")")
            r5+=("$(ratio "$k5" "$l5")")
            rb+=("$kb")
            printf '%-5s %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %9s %9s %9s %7s\n' "$i" "$kp" "$lp" "$k0" "$l0" "$k5" "$l5" \
                "${rp[-1]}" "${r0[-1]}" "${r5[-1]}" "$kb"
        done
        echo "median kvwire/llama.cpp: prefill512 $(printf '%s\n' "${rp[@]}" | median)," \
            "decode@0 $(printf '%s\n' "${r0[@]}" | median), decode@512 $(printf '%s\n' "${r5[@]}" | median);" \
            "kvwire decode@0 / bound $(printf '%s\n' "${rb[@]}" | median) (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    done
done

# ---- greedy tokens ---------------------------------------------------------------------------------------------------
formats=(q8_0)
make_files smollm2
llama_hf="$mdir/llama-tiny-hf"
if [ ! -f "$mdir/llama-tiny-f32.gguf" ]; then
    "$kvwire" gen-model --arch llama --hidden 256 --head-dim 64 --heads 4 --kv-heads 2 --intermediate 512 --layers 2 \
        --vocab 49152 --dtype f32 --seed 4 --out "$llama_hf" >/dev/null
    python3 -c 'import json, sys
p = sys.argv[1] + "/config.json"
c = json.load(open(p))
c.pop("rope_scaling", None)
json.dump(c, open(p, "w"), indent=2)' "$llama_hf"
    "$kvwire" quantize --model "$llama_hf" --out "$mdir/llama-tiny-f32.gguf" --type f32 --vocab-from "$smollm2" >&2
fi
# kvwire keeps Q8_0 weights exact (rebuilt in registers, the f32 weights' logits bit for bit); llama.cpp's Q8_0 matmul
# also rounds the activations to Q8_0 blocks. The third check runs llama.cpp on the Q8_0 file's own weights written
# as F32 (kvwire quantize --type f32 of the Q8_0 file), which separates that rounding from everything else.
[ -f "$mdir/smollm2-q8_0-as-f32.gguf" ] ||
    "$kvwire" quantize --model "$mdir/smollm2-q8_0.gguf" --out "$mdir/smollm2-q8_0-as-f32.gguf" --type f32 >&2
prompts=("The capital of France is" "def fibonacci(n):" "Once upon a time, there was a" "The three primary colors are")
checks=("smollm2-q8_0.gguf smollm2-q8_0.gguf" "llama-tiny-f32.gguf llama-tiny-f32.gguf"
    "smollm2-q8_0.gguf smollm2-q8_0-as-f32.gguf")
for check in "${checks[@]}"; do
    read -r kwf lcf <<<"$check"
    echo
    echo "## greedy: kvwire generate on $kwf vs llama-simple on $lcf, 24 new tokens"
    same=0
    for p in "${prompts[@]}"; do
        kw=$("$kvwire" generate --model "$mdir/$kwf" --prompt "$p" --max-new-tokens 24 --threads "$threads" 2>/dev/null |
            sed '/^prompt_ids: /,$d')
        lc=$("$lsimple" -m "$mdir/$lcf" -n 24 "$p" 2>/dev/null)
        lc=${lc#"$p"}
        if [ "$kw" = "$lc" ]; then
            same=$((same + 1))
            echo "same: \"$p\" -> $(printf '%q' "$kw")"
        else
            echo "DIFFERENT: \"$p\""
            echo "  kvwire:    $(printf '%q' "$kw")"
            echo "  llama.cpp: $(printf '%q' "$lc")"
        fi
    done
    echo "greedy continuations equal on $same of ${#prompts[@]} prompts"
done
