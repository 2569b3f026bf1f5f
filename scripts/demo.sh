#!/usr/bin/env bash
# Build and run the quickstart example (Release, in build/ like scripts/test.sh, so running the
# tests afterwards reuses this configuration):
#   bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-deps.sh

build_dir="${MUON_BUILD_DIR:-build}"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" -j"$(nproc)" --target quickstart
"$build_dir/examples/01_quickstart/quickstart"
