#!/usr/bin/env bash
# The one prepared device run: install carried wheels (the GPU machine has no network and no PyAV/DALI),
# run the cuda tests and the GPU benchmarks, write everything to $OUT. Aim: under 8 minutes.
#   prepare here:  bash benchmarks/fetch_gpu_wheels.sh   (fills wheels-gpu/, ignored by git)
#   on the device: bash benchmarks/gpu_check.sh          (carry: wheels-gpu)
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -V
} > "$OUT/device.txt" 2>&1
if [ -d wheels-gpu ]; then
  # DALI's wheel is larger than one carry: it may arrive in parts, joined here.
  for parts in wheels-gpu/*.part-aa; do
    [ -e "$parts" ] || continue
    cat "${parts%.part-aa}".part-* > "${parts%.part-aa}" && rm -f "${parts%.part-aa}".part-*
  done
  python -m pip install --no-index --find-links wheels-gpu --quiet wheels-gpu/*.whl >> "$OUT/install.log" 2>&1
fi
python -m pip install --no-deps --no-build-isolation --quiet -e . >> "$OUT/install.log" 2>&1
python -m pytest -q -m cuda -p no:cacheprovider --junitxml="$OUT/cuda-tests.xml" > "$OUT/cuda-tests.txt" 2>&1
echo "cuda tests rc=$?" >> "$OUT/device.txt"
timeout 240 python benchmarks/gpu_bench.py --out "$OUT" > "$OUT/gpu_bench.txt" 2>&1
echo "gpu bench rc=$?" >> "$OUT/device.txt"
tail -3 "$OUT/cuda-tests.txt"
cat "$OUT/device.txt"
