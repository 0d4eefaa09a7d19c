# cli_lib.sh: the preamble the command-line test scripts share, sourced as
#   . "$(dirname "$0")/../cli_lib.sh" "$@"
# with the script's arguments (kvwire binary, source dir, build dir). Sets kvwire, src and build, works in a fresh
# temporary folder removed on exit, stops at the first failing command, and defines fail MESSAGE and
# field KEY FILE (the value of the first "KEY: value" line of FILE), and tiny_c2c_models (below).
set -euo pipefail
kvwire=$1
src=$2
build=${3:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
fail() { echo "FAIL: $*"; exit 1; }
field() { grep "^$1: " "$2" | head -1 | sed "s/^$1: //"; }
# tiny_c2c_models: a tiny C2C trio in ./recv (qwen3, 3 layers), ./shar (qwen2, 2 layers) and ./fuser (sharer layer 1's
# receiver layer closed); gen-fuser's report goes to ./gates.txt.
tiny_c2c_models() {
    "$kvwire" gen-model --arch qwen3 --preset tiny --layers 3 --seed 1 --tokenizer "$src/models/tokenizers/qwen3" \
        --out recv >/dev/null
    "$kvwire" gen-model --arch qwen2 --preset tiny --layers 2 --seed 2 --tokenizer "$src/models/tokenizers/qwen3" \
        --out shar >/dev/null
    "$kvwire" gen-fuser --receiver recv --sharer shar --out fuser --seed 3 --hidden 64 --intermediate 96 \
        --closed-layers 1 --k-only-layers "" --v-only-layers "" >gates.txt
}
