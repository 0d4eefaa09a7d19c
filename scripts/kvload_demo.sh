#!/usr/bin/env bash
# kvload_demo.sh: the demo's last step: sharerd and receiverd on loopback with the embedded tiny models (as
# scripts/demo.sh makes them in out/demo, made here too if they are missing), a small kvload sweep
# (loadgen/sweeps/demo.yaml: a bf16 reference, receiver-only, text relay, int8 and int4 at three proportions of the
# tokens, on the OpenBookQA-style sample items), its report (out/kvload-demo/report/index.html, with a screenshot when
# a headless chromium is installed), opened in a browser when there is a display. The models are random, so accuracy
# is noise; what the report shows is the measured bytes, the agreement with the reference and the stage timings.
# Run again, it resumes the sweep (finished points are kept). KVLOAD_DEMO_SWEEP names another sweep file;
# KVLOAD_DEMO_MODEL=PATH (an HF model folder or a .gguf file, e.g. the SmolLM2-135M-Instruct that
# `kvwire fetch-model smollm2-135m-instruct` prints) serves that model on both sides instead and runs
# loadgen/sweeps/kv_direct.yaml (codecs against the lossless kv_direct transfer).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/tools/kvwire ] && [ -x build/loadgen/kvload ] || { ./scripts/deps.sh && ./scripts/build.sh build; }
for b in build/sharer/sharerd build/receiver/receiverd; do
    [ -x "$b" ] || { echo "kvload_demo: $b is not built (the daemons are needed for this step)" >&2; exit 1; }
done
kvwire=build/tools/kvwire
kvload=build/loadgen/kvload
models=out/demo
out=out/kvload-demo
sweep=${KVLOAD_DEMO_SWEEP:-loadgen/sweeps/demo.yaml}
model=${KVLOAD_DEMO_MODEL:-}
if [ -n "$model" ]; then
    model=$(realpath "$model")
    sweep=${KVLOAD_DEMO_SWEEP:-loadgen/sweeps/kv_direct.yaml}
    out=out/kvload-demo-$(basename "$model" .gguf)
fi
mkdir -p "$models" "$out"

if [ -z "$model" ] && [ ! -d "$models/tiny-fuser" ]; then
    echo "== tiny models (random weights, real Qwen tokenizer) =="
    "$kvwire" gen-model --arch qwen3 --preset tiny --tied 0 --seed 1 --tokenizer models/tokenizers/qwen3 \
        --out "$models/tiny-qwen3"
    "$kvwire" gen-model --arch qwen2 --preset tiny --tied 0 --seed 2 --tokenizer models/tokenizers/qwen3 \
        --out "$models/tiny-qwen2"
    "$kvwire" gen-fuser --receiver "$models/tiny-qwen3" --sharer "$models/tiny-qwen2" --out "$models/tiny-fuser" \
        --seed 3 --hidden 64 --intermediate 64
fi

echo "== sharerd and receiverd on loopback (deploy/config/*.tiny.yaml, ephemeral ports) =="
pids=()
stop() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop EXIT
ready_port() {
    for _ in $(seq 600); do
        if [ -s "$1" ]; then sed 's/port=//' "$1"; return 0; fi
        sleep 0.1
    done
    echo "kvload_demo: $2 did not start; its log:" >&2
    cat "$3" >&2
    return 1
}
rm -f "$out/sharerd.ready" "$out/receiverd.ready"
sharer_config=deploy/config/sharerd.tiny.yaml
receiver_config=deploy/config/receiverd.tiny.yaml
if [ -n "$model" ]; then # one model on both sides, no fuser: kv_direct, receiver_only, text_relay
    sharer_config=$out/sharerd.yaml
    receiver_config=$out/receiverd.yaml
    name=$(basename "$model" .gguf)
    printf 'listen: {host: 127.0.0.1, port: 0}\nmodels:\n  - {name: %s, path: %s}\n' "$name" "$model" >"$sharer_config"
    printf 'http: {host: 127.0.0.1, port: 0}\nmodel: {name: %s, path: %s}\nsharers:\n  - {name: local, host: 127.0.0.1, port: 1}\n' \
        "$name" "$model" >"$receiver_config"
fi
build/sharer/sharerd --config "$sharer_config" --listen.port 0 \
    --runtime.ready_file "$out/sharerd.ready" 2>"$out/sharerd.log" &
pids+=($!)
sport=$(ready_port "$out/sharerd.ready" sharerd "$out/sharerd.log")
build/receiver/receiverd --config "$receiver_config" --http.port 0 --sharers.0.port "$sport" \
    --runtime.ready_file "$out/receiverd.ready" 2>"$out/receiverd.log" &
pids+=($!)
rport=$(ready_port "$out/receiverd.ready" receiverd "$out/receiverd.log")
url=http://127.0.0.1:$rport
for _ in $(seq 300); do # healthy: the sharer link is up (a 503 before that would fail the first point's requests)
    curl -sf "$url/health" >/dev/null && break
    sleep 0.1
done
echo "receiverd on $url"

echo "== kvload sweep $sweep =="
"$kvload" sweep "$sweep" --out "$out/sweep" --url "$url"
stop
trap - EXIT

echo "== kvload report =="
# The tiny models are random, so accuracy is noise; the agreement with the bf16 reference is what a codec or selection
# changes. Both reports are written; the agreement one is opened.
"$kvload" report "$out/sweep" --out "$out/report-accuracy" --metric accuracy \
    --title "kvload demo: accuracy, ${model:-tiny random models}, OpenBookQA-style samples"
"$kvload" report "$out/sweep" --out "$out/report" --metric tf_top1_agreement \
    --title "kvload demo: teacher-forced agreement with the lossless transfer, ${model:-tiny random models}"
for b in chromium-headless-shell chromium; do
    if command -v "$b" >/dev/null 2>&1; then
        timeout 120 "$b" --no-sandbox --disable-gpu --hide-scrollbars "--user-data-dir=$PWD/$out/.chromium" \
            --window-size=1280,2200 "--screenshot=$PWD/$out/report/screenshot.png" \
            "file://$PWD/$out/report/index.html" >/dev/null 2>&1 && echo "screenshot: $out/report/screenshot.png"
        break
    fi
done
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && command -v xdg-open >/dev/null 2>&1; then
    xdg-open "$out/report/index.html" >/dev/null 2>&1 &
fi
echo "report: $out/report/index.html"
