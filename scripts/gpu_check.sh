#!/usr/bin/env bash
# The CUDA backend's checks on a GPU machine (a bare one: nvcc, CMake and ninja, no package
# registry). First, on a machine with a registry, pack what the build needs into .deps/ (ignored
# by git; carry it along, about 15 MiB):
#   ../shared/device/pack-deps.sh libeigen3-dev catch2 nlohmann-json3-dev
# then, from the project root on the GPU machine:
#   bash scripts/gpu_check.sh            # logs and a summary under $OUT (default: ./gpu-out)
# Configures a Release build of muon_cuda_tests and bench_cuda only (about 2 minutes on 16
# cores), runs every test, then the hidden invalid-stream case on its own (a driver may crash on
# a stale handle; that must not hide the other results), then the benchmark against
# torch.optim.Muon + fused AdamW (benchmarks/cuda/compare_torch_gpu.py; bench_cuda alone when
# python3 has no torch). MUON_GPU_SKIP_BENCH=1 skips the benchmark. Exit status: that of the
# main test run.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
if [ -d .deps/usr ]; then
  export CMAKE_PREFIX_PATH="$PWD/.deps/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
  export LD_LIBRARY_PATH="$PWD/.deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export PATH="/usr/local/cuda/bin:$PATH"
build="${MUON_GPU_BUILD_DIR:-build-gpu}"
generator=()
[ ! -f "$build/CMakeCache.txt" ] && command -v ninja >/dev/null && generator=(-G Ninja)

{
  echo "date: $(date -u)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  nvcc --version | tail -2
} >"$out/environment.txt"

start=$SECONDS
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DMUON_BUILD_BENCHMARKS=OFF -DMUON_BUILD_EXAMPLES=OFF >"$out/configure.log" 2>&1 \
  || { echo "configure failed (see configure.log)"; tail -30 "$out/configure.log"; exit 2; }
cmake --build "$build" -j"$(nproc)" --target muon_cuda_tests bench_cuda >"$out/build.log" 2>&1 \
  || { echo "build failed (see build.log)"; tail -60 "$out/build.log"; exit 3; }
echo "configure + build: $((SECONDS - start)) s" | tee -a "$out/environment.txt"

# The NCCL communicator's one-GPU test (tests/distributed), where muon::nccl exists.
cmake --build "$build" -j"$(nproc)" --target muon_nccl_tests >"$out/build_nccl.log" 2>&1 \
  && echo "muon_nccl_tests built" || echo "muon_nccl_tests not built (no NCCL? see build_nccl.log)"

exe="$build/tests/cuda/muon_cuda_tests"
timeout 300 "$exe" --durations yes -r console >"$out/tests.log" 2>&1
status=$?
timeout 60 "$exe" "[invalid_stream]" -r console >"$out/invalid_stream.log" 2>&1
echo "invalid-stream case: exit $?" >>"$out/invalid_stream.log"

grep -E "no CUDA device|test cases|assertions|FAILED|passed" "$out/tests.log" | tail -20
tail -3 "$out/invalid_stream.log"
echo "muon_cuda_tests: exit ${status}"
nccl_exe="$(find "$build/tests/distributed" -name muon_nccl_tests -type f 2>/dev/null | head -1)"
if [ -n "$nccl_exe" ]; then
  timeout 120 "$nccl_exe" >"$out/nccl.log" 2>&1
  echo "muon_nccl_tests: exit $? (77: skipped, no device)" | tee -a "$out/nccl.log"
fi

if [ "${MUON_GPU_SKIP_BENCH:-0}" != "1" ]; then
  bench="$build/benchmarks/cuda/bench_cuda"
  if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    timeout 420 python3 benchmarks/cuda/compare_torch_gpu.py --bench "$bench" --out "$out" >"$out/bench.log" 2>&1
    echo "compare_torch_gpu: exit $?" | tee -a "$out/bench.log"
  else
    timeout 300 "$bench" >"$out/bench_cuda.json" 2>"$out/bench.log"
    echo "bench_cuda (no torch with CUDA here): exit $?" | tee -a "$out/bench.log"
  fi
  tail -20 "$out/bench.log"
fi
exit "$status"
