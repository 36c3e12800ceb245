#!/usr/bin/env bash
# Prepare, on a machine that reaches the package registry, what the GPU machine lacks (it has Python 3.12,
# torch, torchvision, triton, transformers; no PyAV, no DALI, no network). Everything lands in git-ignored
# folders, each small enough for one `carry` (64 MiB per call, working tree included):
#   wheels-gpu/           gpu-mm itself (wheel), PyAV, pytest + pytest-timeout, hypothesis   (~40 MB)
#   wheels-gpu-dali-N/    with --with-dali: DALI and its nvImageCodec/nvCOMP/nvJPEG wheels, tarred and
#                         split into ~55 MB parts, one folder per part                      (~265 MB)
# See benchmarks/GPU_CHECK.md for the device calls.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PLAT=(--only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
rm -rf wheels-gpu wheels-gpu-dali-* .wheels-dali-tmp
mkdir -p wheels-gpu
"$PY" -m pip wheel --no-deps --quiet -w wheels-gpu .
"$PY" -m pip download --quiet --no-deps "${PLAT[@]}" -d wheels-gpu \
  av pytest pluggy iniconfig pygments packaging pytest-timeout hypothesis attrs sortedcontainers
du -sh wheels-gpu
if [ "${1:-}" = "--with-dali" ]; then
  mkdir -p .wheels-dali-tmp
  "$PY" -m pip download --quiet "${PLAT[@]}" -d .wheels-dali-tmp "nvidia-dali-cuda130" "packaging<=26.3"
  rm -f .wheels-dali-tmp/numpy-*.whl  # the GPU machine has numpy with its torch
  tar -cf .wheels-dali.tar -C .wheels-dali-tmp .
  split -b 55M -d .wheels-dali.tar .wheels-dali.tar.part-
  n=0
  for part in .wheels-dali.tar.part-*; do
    n=$((n + 1))
    mkdir -p "wheels-gpu-dali-$n"
    mv "$part" "wheels-gpu-dali-$n/"
  done
  rm -rf .wheels-dali-tmp .wheels-dali.tar
  du -sh wheels-gpu-dali-*
fi
