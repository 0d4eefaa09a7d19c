#!/usr/bin/env bash
# campaign.sh BUILD_DIR OUT_DIR [RUNS] [TARGET...]: runs the libFuzzer targets of a -DKW_FUZZ=ON build (clang) to RUNS
# executions each (default 10^7), one after another on one core, and prints a Markdown table row per target: the
# executions and seconds libFuzzer reports, executions per second, the edges covered at the start and at the end, the
# inputs it added, and the crashers found (kept in OUT_DIR/<target>/crash-*; a crasher stops that target's run). Each
# target's working corpus is OUT_DIR/<target>/corpus, seeded from tests/fuzz/corpora/<target> (never written to);
# logs are OUT_DIR/<target>.log. Used for docs/RELIABILITY.md: e.g.
#   CC=clang cmake -S . -B build-fuzz -DKW_FUZZ=ON -DKW_CUDA=OFF && cmake --build build-fuzz -j2
#   tests/fuzz/campaign.sh build-fuzz /tmp/fuzz-campaign
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: campaign.sh BUILD_DIR OUT_DIR [RUNS] [TARGET...]}
out=${2:?usage: campaign.sh BUILD_DIR OUT_DIR [RUNS] [TARGET...]}
runs=${3:-10000000}
shift $(($# < 3 ? $# : 3))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(wire_decode wire_stream proto_frames http_request config http_api gguf safetensors torchzip)
fi
mkdir -p "$out"
echo "| target | executions | seconds | exec/s | edges at start -> end | inputs added | crashers |"
echo "|---|---:|---:|---:|---|---:|---:|"
for t in "${targets[@]}"; do
    bin="$build/tests/fuzz/fuzz_$t"
    if [ ! -x "$bin" ]; then
        echo "campaign.sh: $bin is missing (configure with -DKW_FUZZ=ON and build it)" >&2
        exit 1
    fi
    mkdir -p "$out/$t/corpus"
    before=$(find "$out/$t/corpus" -type f | wc -l)
    rc=0
    "$bin" "$out/$t/corpus" "$here/corpora/$t" -runs="$runs" -print_final_stats=1 \
        -artifact_prefix="$out/$t/" >"$out/$t.log" 2>&1 || rc=$?
    after=$(find "$out/$t/corpus" -type f | wc -l)
    crashers=$(find "$out/$t" -maxdepth 1 -name 'crash-*' -o -maxdepth 1 -name 'leak-*' -o -maxdepth 1 -name 'timeout-*' |
        wc -l)
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$out/$t.log")
    secs=$(awk '/Done [0-9]+ runs in/ {print $(NF-1)}' "$out/$t.log")
    rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "$out/$t.log")
    cov0=$(grep -m1 -oE 'INITED cov: [0-9]+' "$out/$t.log" | awk '{print $3}' || true)
    cov1=$(grep -oE ' cov: [0-9]+' "$out/$t.log" | tail -n 1 | awk '{print $2}' || true)
    echo "| $t | ${execs:-?} | ${secs:-?} | ${rate:-?} | ${cov0:-?} -> ${cov1:-?} | $((after - before)) | $crashers$([ "$rc" -ne 0 ] && echo " (exit $rc)") |"
done
