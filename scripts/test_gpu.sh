#!/usr/bin/env bash
# test_gpu.sh: on a GPU node, builds kvwire with the CUDA backend (build-gpu/, -DKW_CUDA=ON) and runs the tests that
# need a device (label gpu): the op parity suite on the device, greedy decoding against the CPU backend (receiver-only
# and C2C), the emulator's semantic checks on hardware, the KVWire codec math on the device and the device selection
# and KVWire kernels against the CPU byte for byte (test_gpu_wire), GGUF weights kept quantized (test_gpu_qmatmul,
# test_gpu_e2e_gguf). Fails if any of them is skipped, since on a GPU node a skip means no device was visible (check
# CUDA_VISIBLE_DEVICES and the driver).
# CUDA_ARCHS overrides the architectures compiled (default: the top-level CMakeLists.txt's 80;89;90).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
archs=()
if [ -n "${CUDA_ARCHS:-}" ]; then archs=("-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS"); fi
./scripts/build.sh build-gpu -DKW_CUDA=ON "${archs[@]}"
cd build-gpu
ctest --output-on-failure -L '^gpu$' | tee ctest-gpu.log
if grep -q "Skipped" ctest-gpu.log; then
    echo "test_gpu.sh: some gpu tests were skipped: no CUDA device was visible" >&2
    exit 1
fi
