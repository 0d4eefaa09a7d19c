# cli_lib.sh: the preamble the command-line test scripts share, sourced as
#   . "$(dirname "$0")/../cli_lib.sh" "$@"
# with the script's arguments (kvwire binary, source dir, build dir). Sets kvwire, src and build, works in a fresh
# temporary folder removed on exit, stops at the first failing command, and defines fail MESSAGE and
# field KEY FILE (the value of the first "KEY: value" line of FILE).
set -euo pipefail
kvwire=$1
src=$2
build=${3:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
fail() { echo "FAIL: $*"; exit 1; }
field() { grep "^$1: " "$2" | head -1 | sed "s/^$1: //"; }
