#!/usr/bin/env bash
# q8agree.sh: how close `kvwire generate --weights quantized-int8` is to llama.cpp on SmolLM2 Q8_0, measured against
# llama.cpp's distance to itself (its flash-attention on and off paths), over the 20 prompts of
# bench/kvstats_prompts20.txt (issue 10). Not part of CI; run bench/peer/llamacpp.sh first (its llama.cpp build and
# model files are reused; bench/peer/build_llama_trace.sh builds llama_trace.cpp against it).
# Each prompt is raw text, BOS as each tool adds it (SmolLM2's GGUF: none); the script stops if kvwire's and
# llama.cpp's prompt ids differ. Runs, 32 new tokens each, EOS ignored (kvwire --ignore-eos; most of these raw
# questions get <|im_end|> first, the turn the model then writes is compared too):
#   greedy: llama.cpp Q8_0 fa on / off, llama.cpp F32 copy fa on / off, kvwire quantized-int8, kvwire quantized (exact);
#   teacher-forced: every side fed prompt + one reference continuation (llama.cpp Q8_0 fa on's greedy ids for the Q8_0
#   sides, llama.cpp F32 fa on's for the F32/exact sides), printing its argmax and the forced id's logit per position.
# Table, per pair A vs B: free-running (the mean index of the first differing greedy id, an equal run counting as its
# length, and how many prompts are equal throughout) and teacher-forced (positions where A's and B's argmax agree;
# the mean |logit A - logit B| of the reference's next id).
# Environment: KVWIRE (default build/tools/kvwire), THREADS (2), N (32), PROMPTS, OUT (keep the raw runs there),
# LLAMACPP_PY_VERSION (0.3.36), PEER_CACHE; python3.
set -euo pipefail
peer_name=q8agree.sh
. "$(dirname "$0")/peer_lib.sh"
n=${N:-32}
prompts=${PROMPTS:-$here/bench/kvstats_prompts20.txt}
peer_need_kvwire
peer_need "$mdir/smollm2-q8_0.gguf" "$mdir/smollm2-q8_0-as-f32.gguf"
trace="$cache/build-$version/bin/llama_trace_force"
"$here/bench/peer/build_llama_trace.sh" "$trace"
if [ -n "${OUT:-}" ]; then
    out=$OUT
    mkdir -p "$out"
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi

lc() { # name file fa prompt [force]: llama.cpp's run as "ids: ...", "argmax: ...", "logits: ..." lines
    "$trace" "$mdir/$2" "$n" "$4" "$3" "$threads" "" "" "${5:-}" 1 2>/dev/null >"$out/$1.raw"
    sed -n 's/^prompt_ids: //p' "$out/$1.raw" >"$out/$1.prompt"
    if [ -n "${5:-}" ]; then
        sed -n 's/^tok [0-9]* .* forced=\([0-9]*\) .*/\1/p' "$out/$1.raw" | tr '\n' ' ' >"$out/$1.ids"
    else
        sed -n 's/^tok [0-9]* id=\([0-9]*\) .*/\1/p' "$out/$1.raw" | tr '\n' ' ' >"$out/$1.ids"
    fi
    sed -n 's/^tok [0-9]* id=\([0-9]*\) .*/\1/p' "$out/$1.raw" | tr '\n' ' ' >"$out/$1.argmax"
    if [ -n "${5:-}" ]; then
        sed -n 's/^tok .* flogit=\([-0-9.]*\) .*/\1/p' "$out/$1.raw" | tr '\n' ' ' >"$out/$1.logits"
    else
        sed -n 's/^tok [0-9]* id=[0-9]* logit=\([-0-9.]*\) .*/\1/p' "$out/$1.raw" | tr '\n' ' ' >"$out/$1.logits"
    fi
}
kw() { # name weights prompt [force]: without forced ids $n new tokens, with them as many as they are
    local -a f=(--max-new-tokens "$n")
    [ -n "${4:-}" ] && f=(--force-ids "$4")
    "$kvwire" generate --model "$mdir/smollm2-q8_0.gguf" --weights "$2" --prompt "$3" --threads "$threads" --ignore-eos \
        "${f[@]}" 2>/dev/null >"$out/$1.raw"
    sed -n 's/^prompt_ids: \[\(.*\)\]/\1/p' "$out/$1.raw" | tr -d ',' >"$out/$1.prompt"
    sed -n 's/^generated_ids: \[\(.*\)\]/\1/p' "$out/$1.raw" | tr -d ',' >"$out/$1.ids"
    if [ -n "${4:-}" ]; then
        sed -n 's/^argmax_ids: \[\(.*\)\]/\1/p' "$out/$1.raw" | tr -d ',' >"$out/$1.argmax"
        sed -n 's/^forced_logits: \[\(.*\)\]/\1/p' "$out/$1.raw" | tr -d ',' >"$out/$1.logits"
    fi
}
csv() { tr -s ' ' '\n' <"$1" | grep . | paste -sd, -; }

i=0
while IFS= read -r p || [ -n "$p" ]; do
    [ -n "$p" ] || continue
    i=$((i + 1))
    log "prompt $i: $p"
    lc "p$i.lq1" smollm2-q8_0.gguf 1 "$p"
    lc "p$i.lq0" smollm2-q8_0.gguf 0 "$p"
    lc "p$i.lf1" smollm2-q8_0-as-f32.gguf 1 "$p"
    lc "p$i.lf0" smollm2-q8_0-as-f32.gguf 0 "$p"
    kw "p$i.k8" quantized-int8 "$p"
    kw "p$i.kx" quantized "$p"
    rq=$(csv "$out/p$i.lq1.ids")
    rf=$(csv "$out/p$i.lf1.ids")
    lc "p$i.tlq1" smollm2-q8_0.gguf 1 "$p" "$rq"
    lc "p$i.tlq0" smollm2-q8_0.gguf 0 "$p" "$rq"
    kw "p$i.tk8" quantized-int8 "$p" "$rq"
    lc "p$i.tlf1" smollm2-q8_0-as-f32.gguf 1 "$p" "$rf"
    lc "p$i.tlf0" smollm2-q8_0-as-f32.gguf 0 "$p" "$rf"
    kw "p$i.tkx" quantized "$p" "$rf"
done <"$prompts"

python3 - "$out" "$i" "$n" <<'PY'
import sys
out, n_prompts, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rd(name, kind, conv=int):
    with open(f"{out}/{name}.{kind}") as f:
        return [conv(x) for x in f.read().split()]
bad = 0
for i in range(1, n_prompts + 1):
    ref = rd(f"p{i}.lq1", "prompt")
    for s in ("lq0", "lf1", "lf0", "k8", "kx", "tlq1", "tlq0", "tk8", "tlf1", "tlf0", "tkx"):
        if rd(f"p{i}.{s}", "prompt") != ref:
            print(f"prompt {i}: {s}'s prompt ids {rd(f'p{i}.{s}', 'prompt')} differ from llama.cpp's {ref}")
            bad += 1
    # the forced runs fed the reference; llama.cpp fa on forced with its own greedy ids must reproduce them
    for t, g in (("tlq1", "lq1"), ("tlf1", "lf1")):
        if rd(f"p{i}.{t}", "argmax") != rd(f"p{i}.{g}", "ids"):
            print(f"prompt {i}: llama.cpp {t}'s argmax differs from its own greedy ids")
if bad:
    sys.exit("prompt ids differ: the comparison is void")
print(f"prompt ids: equal between kvwire and llama.cpp on all {n_prompts} prompts")

def first_diff(a, b):
    for k in range(min(len(a), len(b))):
        if a[k] != b[k]:
            return k, False
    return min(len(a), len(b)), len(a) == len(b)

pairs = [
    ("(a) llama.cpp Q8_0 fa on vs fa off", "lq1", "lq0", "tlq1", "tlq0"),
    ("(b) kvwire int8 vs llama.cpp Q8_0 fa on", "k8", "lq1", "tk8", "tlq1"),
    ("(c) kvwire int8 vs llama.cpp Q8_0 fa off", "k8", "lq0", "tk8", "tlq0"),
    ("(d) kvwire exact vs llama.cpp F32 fa on", "kx", "lf1", "tkx", "tlf1"),
    ("(d) llama.cpp F32 fa on vs fa off", "lf1", "lf0", "tlf1", "tlf0"),
    ("(d) kvwire exact vs llama.cpp F32 fa off", "kx", "lf0", "tkx", "tlf0"),
]
print(f"\n| pair | free-running: mean first differing index (of {n}) | prompts equal throughout | "
      "teacher-forced: positions with equal argmax | mean abs logit diff of the reference id | per prompt: first diff / "
      "forced disagreements |")
print("|---|---|---|---|---|---|")
for label, a, b, ta, tb in pairs:
    fd, eq, agree, tot, dl, per = [], 0, 0, 0, [], []
    for i in range(1, n_prompts + 1):
        k, same = first_diff(rd(f"p{i}.{a}", "ids"), rd(f"p{i}.{b}", "ids"))
        fd.append(k)
        eq += same
        xa, xb = rd(f"p{i}.{ta}", "argmax"), rd(f"p{i}.{tb}", "argmax")
        la, lb = rd(f"p{i}.{ta}", "logits", float), rd(f"p{i}.{tb}", "logits", float)
        assert len(xa) == len(xb) == len(la) == len(lb)
        m = sum(x == y for x, y in zip(xa, xb))
        agree += m
        tot += len(xa)
        dl += [abs(x - y) for x, y in zip(la, lb)]
        per.append(f"{'=' if same else k}/{len(xa) - m}")
    print(f"| {label} | {sum(fd) / len(fd):.1f} | {eq} of {n_prompts} | {agree} of {tot} ({100 * agree / tot:.1f}%) | "
          f"{sum(dl) / len(dl):.4f} | {' '.join(per)} |")
PY
