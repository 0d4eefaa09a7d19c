# shellcheck shell=bash
# bench_lib.sh: what the stand-alone C benchmark scripts of bench/ (codec_floor.sh, hash_read.sh) share, sourced as
#   . "$(dirname "$0")/bench_lib.sh" NAME ROUNDS DEFAULT
# after `set -euo pipefail`: sets rounds (ROUNDS, or DEFAULT when empty; exits 2 naming NAME unless a positive integer)
# and dir (a temporary folder removed on exit), and writes $dir/thread_clock.h, whose now() is the calling thread's CPU
# time in seconds (the programs' timer: steadier than wall time on a shared machine).
rounds=${2:-$3}
case $rounds in '' | *[!0-9]* | 0)
    echo "$1: ROUNDS must be a positive integer" >&2
    exit 2
    ;;
esac
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/thread_clock.h" <<'C'
#include <time.h>
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}
C
