#!/usr/bin/env bash
# cli_kvload_browser.sh: kvload's HTML report opened in a real headless browser (Debian's chromium): the page's own
# check (every plot laid out with a non-zero size and as many drawn points as runs, one table row per run) must
# report data-check="ok" in the rendered DOM, and a screenshot must be a PNG of the requested size with content.
# Skipped (77) where no chromium is installed. Arguments: kvwire binary, source dir, build dir, kvload binary.
. "$(dirname "$0")/../cli_lib.sh" "$@"
kvload=$4
browser=""
for b in chromium-headless-shell chromium chromium-browser; do
    if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
done
[ -n "$browser" ] || { echo "no chromium: skipped"; exit 77; }
pid=""
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

"$kvload" stub --port-file port 2>stub.log &
pid=$!
for _ in $(seq 1 100); do [ -s port ] && break; sleep 0.05; done
url=http://127.0.0.1:$(cat port)
cat >sweep.yaml <<YAML
run: {dataset_name: ai2-arc, dataset_path: $src/loadgen/samples/ai2_arc.jsonl, max_tokens: 8, progress: never}
reference: full
points:
  - {name: full, kvwire: {mode: c2c}}
  - {name: alone, kvwire: {mode: receiver_only}}
  - {name: relay, kvwire: {mode: text_relay, relay: {max_bytes: 64}}}
grids:
  - name: q
    kvwire: {mode: c2c, policy: {selection: knorm_topk, codec: int4}}
    axes: {policy.proportion: [0.25, 0.5]}
YAML
"$kvload" sweep sweep.yaml --out sw --url "$url" >/dev/null
"$kvload" report sw --out rep --title "browser check" >/dev/null

flags=(--no-sandbox --disable-gpu --hide-scrollbars "--user-data-dir=$tmp/profile")
timeout 120 "$browser" "${flags[@]}" --dump-dom "file://$tmp/rep/index.html" >dom.html 2>browser.log ||
    fail "the browser failed: $(tail -5 browser.log)"
check=$(grep -o 'data-check="[^"]*"' dom.html | head -1)
[ "$check" = 'data-check="ok"' ] || fail "the page's check says $check"
timeout 120 "$browser" "${flags[@]}" --window-size=1280,1800 "--screenshot=$tmp/rep/screenshot.png" \
    "file://$tmp/rep/index.html" >/dev/null 2>>browser.log || fail "no screenshot: $(tail -5 browser.log)"
[ "$(head -c 8 rep/screenshot.png | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "not a PNG"
# IHDR width and height (bytes 16..23, big-endian).
[ "$(od -An -tu1 -j16 -N8 rep/screenshot.png | tr -s ' ' | sed 's/^ //')" = "0 0 5 0 0 0 7 8" ] ||
    fail "screenshot size: $(od -An -tu1 -j16 -N8 rep/screenshot.png)"
size=$(stat -c %s rep/screenshot.png)
[ "$size" -gt 30000 ] || fail "the screenshot looks empty ($size bytes)"
if [ -n "${KW_KEEP_SCREENSHOT:-}" ]; then cp rep/screenshot.png "$KW_KEEP_SCREENSHOT"; fi
echo ok
