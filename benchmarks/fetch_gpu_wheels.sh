#!/usr/bin/env bash
# Download, on a machine with the package registry, the wheels the GPU machine lacks (Python 3.12,
# x86_64), into wheels-gpu/ (git-ignored). DALI (~200 MB) is split into parts that fit a carry.
set -euo pipefail
mkdir -p wheels-gpu
python -m pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
  --platform manylinux2014_x86_64 -d wheels-gpu av qwen-vl-utils decord2 hypothesis pytest-timeout \
  "nvidia-dali-cuda130" "packaging<=26.3"
for w in wheels-gpu/nvidia_dali*.whl; do
  [ -e "$w" ] || continue
  split -b 60M "$w" "$w.part-" && rm "$w"
done
ls -la wheels-gpu
