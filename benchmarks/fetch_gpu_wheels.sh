#!/usr/bin/env bash
# Prepare, on a machine that reaches the package registry, the few wheels the GPU machine lacks. Its image
# has Python 3.12 with torch, torchvision, triton, transformers, pillow, aiohttp, prometheus-client, pytest,
# pytest-timeout and hypothesis, but no PyAV and no DALI, and nothing can be fetched there. The project's
# source travels with the working tree; only these wheels are carried (git-ignored):
#   .whl/                     PyAV for CPython 3.12, qwen-vl-utils (test_ops.py's reference), pytest-asyncio
#                             (the suite's async tests) and PyNvVideoCodec (the second NVDEC backend, without
#                             the FFmpeg sources, samples and benchmarks its wheel carries; ~46 MB): the first
#                             call's `carry`
#   .whl-dali-1 .. -N/        with --with-dali: DALI and its nvImageCodec/nvCOMP/nvJPEG wheels, tarred and
#                             split into parts of at most 50 MB, one folder (and one call) per part
# See benchmarks/GPU_CHECK.md for the device calls.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
rm -rf .whl .whl-dali-* .whl-dali-tmp
mkdir -p .whl
"$PY" -m pip download --quiet --no-deps "${PLAT[@]}" -d .whl "av==18.1.0" "qwen-vl-utils==0.0.14" \
  "pytest-asyncio==1.5.0" "pynvvideocodec==2.2.4"
"$PY" benchmarks/strip_wheel.py .whl/pynvvideocodec-*.whl pynvvideocodec-2.2.4.data/ samples/ benchmarks/
du -sh .whl
if [ "${1:-}" = "--with-dali" ]; then
  mkdir -p .whl-dali-tmp
  "$PY" -m pip download --quiet "${PLAT[@]}" -d .whl-dali-tmp "nvidia-dali-cuda130==2.4.0" "packaging<=26.3"
  rm -f .whl-dali-tmp/numpy-*.whl  # the GPU machine has numpy with its torch
  # shellcheck source=benchmarks/dali_parts.sh
  . benchmarks/dali_parts.sh
  dali_split .whl-dali-tmp .whl-dali 50
  rm -rf .whl-dali-tmp
  du -sh .whl-dali-*
fi
