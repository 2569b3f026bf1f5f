#!/usr/bin/env bash
# Installs muon's build and test dependencies (Debian/Ubuntu), unless all are present.
# Set MUON_SKIP_DEPS=1 to skip this step entirely (e.g. on another distribution).
set -euo pipefail

packages=(cmake g++ make libeigen3-dev catch2 nlohmann-json3-dev libbenchmark-dev
          libxtensor-dev libxtensor-blas-dev libopenblas-dev libdnnl-dev
          zlib1g-dev dataset-fashion-mnist  # examples/02_ablation: reads Fashion-MNIST with zlib
          libopenmpi-dev openmpi-bin)       # muon::mpi and the mpiexec tests (tests/distributed)

if [[ "${MUON_SKIP_DEPS:-0}" == "1" ]]; then
  echo "install-deps: MUON_SKIP_DEPS=1, skipping"
  exit 0
fi
if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: no dpkg/apt-get here; install these yourself: ${packages[*]}" >&2
  exit 0
fi

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed$'; then
    missing+=("$pkg")
  fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=()
if [[ "$(id -u)" != "0" ]]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "install-deps: not root and no sudo; cannot install ${missing[*]}" >&2
    exit 1
  fi
fi
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${packages[@]}"
