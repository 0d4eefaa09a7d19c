#!/usr/bin/env bash
# check_format.sh KVWIRE SOURCE_DIR BUILD_DIR: every tracked C/C++/CUDA file is clang-formatted (.clang-format).
# Skips (exit 77) when clang-format or git metadata is unavailable.
set -u
src=$2
command -v clang-format >/dev/null || { echo "clang-format not installed: skipped"; exit 77; }
cd "$src" || exit 1
files=$(git ls-files '*.c' '*.h' '*.cu' '*.cuh' '*.cpp' 2>/dev/null) || { echo "not a git checkout: skipped"; exit 77; }
bad=0
for f in $files; do
    if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
        echo "not formatted: $f (run clang-format -i $f)"
        bad=1
    fi
done
[ $bad = 0 ] && echo "format: ok"
exit $bad
