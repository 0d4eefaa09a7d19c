#!/usr/bin/env bash
# peer_lib.sh: what the bench/peer scripts share (sourced, never run): the kvwire binary, the thread count, the peer
# cache with llamacpp.sh's llama.cpp build and model files, a log line and a median. Set peer_name before sourcing.
# Environment: KVWIRE (default build/tools/kvwire), THREADS (2), LLAMACPP_PY_VERSION (0.3.36), PEER_CACHE (default
# ~/.cache/kvwire/peer). Not part of CI.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
kvwire=${KVWIRE:-$here/build/tools/kvwire}
threads=${THREADS:-2}
cache=${PEER_CACHE:-$HOME/.cache/kvwire/peer}
mdir="$cache/models"

# peer_set_version V: the llama-cpp-python version whose sdist and build the paths below name.
peer_set_version() {
    version=$1
    sdist_dir="$cache/llama_cpp_python-$version"
    llama_src="$sdist_dir/vendor/llama.cpp"
    build="$cache/build-$version"
}
peer_set_version "${LLAMACPP_PY_VERSION:-0.3.36}"

log() { echo "[${peer_name:-peer}] $*" >&2; }

# peer_need_kvwire: stop unless the kvwire binary exists.
peer_need_kvwire() {
    [ -x "$kvwire" ] || { log "no kvwire binary at $kvwire (build first, or set KVWIRE)"; exit 1; }
}

# peer_need FILE...: stop unless every FILE exists (llamacpp.sh makes them).
peer_need() {
    local f
    for f in "$@"; do
        [ -e "$f" ] || { log "missing $f: run bench/peer/llamacpp.sh first"; exit 1; }
    done
}

# median: the median of the numbers on stdin, one per line.
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
