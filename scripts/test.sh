#!/usr/bin/env bash
# test.sh: installs dependencies, builds kvwire three times (gcc optimised with the CUDA backend where nvcc exists;
# gcc with AddressSanitizer + LeakSanitizer + UndefinedBehaviorSanitizer; clang with its UndefinedBehaviorSanitizer,
# which catches cases gcc's does not, e.g. arithmetic on NULL) and runs the whole test suite in each; the optimised
# build also reruns the CPU-sensitive suites on the AVX2 and scalar kernel paths. Tests labelled `slow` run only with
# KW_TEST_SLOW=1; `gpu` tests skip themselves (exit 77) where no CUDA device is present. The `gpu-emu` tests (the CUDA
# backend's kernels run by the CUDA emulator of kernels/cuda/emu, no device needed) run in all three builds; each
# build checks that they did.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh

exclude=slow
# ctest -j runs several test processes, each with its CPU threads, on few cores: a thread that spins while its partner
# is descheduled burns its time slice (docs/BENCHMARKS.md "OpenMP waiting under CPU contention"), so the CPU backend's
# threads sleep at once between ops and the benchmarks' OpenMP teams wait passively. Results do not depend on it.
export KW_CPU_SPIN_US=${KW_CPU_SPIN_US:-0} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
if [ "${KW_TEST_SLOW:-0}" = 1 ]; then exclude='^$'; fi
jobs=$(nproc 2>/dev/null || echo 2)

# gpu_emu_ran DIR: the gpu-emu tests of a build ran (they are part of the runs above); fails if the build has none,
# which would mean the emulator was not built (no C++ compiler, KW_CUDA_EMU=OFF).
gpu_emu_ran() {
    local n
    n=$(cd "$1" && ctest -N -L gpu-emu | sed -n 's/^Total Tests: //p')
    if [ "${n:-0}" -eq 0 ]; then
        echo "no gpu-emu tests in $1: the CUDA emulator was not built" >&2
        exit 1
    fi
    echo "== $1: $n gpu-emu tests ran (the CUDA kernels on the emulator) =="
}

echo "== build (optimised) =="
./scripts/build.sh build
echo "== real models (kvwire fetch-model: downloaded once, then cached; the tests skip when they cannot be had) =="
for m in smollm2-135m-instruct gemma-3-270m; do
    ./build/tools/kvwire fetch-model "$m" || echo "fetch-model $m failed: the tests that need it will skip"
done
echo "== test (optimised) =="
(cd build && ctest --output-on-failure -j "$jobs" -LE "$exclude")
gpu_emu_ran build

# The CPU-sensitive suites again on the other kernel paths (the CPU backend and wire/'s codec kernels both follow
# KW_CPU_ISA), so that a machine with AVX-512 also runs what an AVX2-only machine would (and every machine the portable
# scalar path): results must be the same bits on each (the AVX2 run also pins OpenBLAS to its Haswell kernels, which
# only the sgemm baseline of `kvwire bench kernels` still uses).
echo "== test (optimised, KW_CPU_ISA=avx2) =="
(cd build && OPENBLAS_CORETYPE=Haswell KW_CPU_ISA=avx2 ctest --output-on-failure -j "$jobs" -L 'kernels|model|c2c|wire' -LE "cli|$exclude")
echo "== test (optimised, KW_CPU_ISA=scalar) =="
(cd build && KW_CPU_ISA=scalar ctest --output-on-failure -j "$jobs" -L 'kernels|model|c2c|wire' -LE "cli|$exclude")

echo "== build (ASan + UBSan) =="
./scripts/build.sh build-asan -DKW_SANITIZE=ON -DKW_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug -DKW_TEST_TIMEOUT_MULTIPLIER=4
echo "== test (ASan + UBSan) =="
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && ctest --output-on-failure -j "$jobs" -LE "$exclude|nosan")
gpu_emu_ran build-asan

echo "== build (clang + UBSan) =="
ubsan="-fsanitize=undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CC=clang CXX=clang++ ./scripts/build.sh build-ubsan -DKW_CUDA=OFF -DCMAKE_BUILD_TYPE=Debug \
    -DKW_TEST_TIMEOUT_MULTIPLIER=4 "-DCMAKE_C_FLAGS=$ubsan" "-DCMAKE_CXX_FLAGS=$ubsan" \
    -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=undefined
echo "== test (clang + UBSan) =="
(cd build-ubsan && ctest --output-on-failure -j "$jobs" -LE "$exclude|nosan")
gpu_emu_ran build-ubsan
