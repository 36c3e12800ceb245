#!/usr/bin/env bash
# The one prepared device run (aim: under 8 minutes): install carried wheels, run the `cuda` tests and
# the GPU benchmark, write everything to $OUT. Run from the repository root on the GPU machine.
# Inputs (git-ignored, carried): wheels-gpu/ (required), .gpu-stash/*.part-* (DALI, optional; see
# benchmarks/GPU_CHECK.md). Python runs with -P so the installed gpu_mm (with gpu_mm.kernels) is used,
# not the source folder.
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
log() { echo "[gpu_check] $*" | tee -a "$OUT/device.txt"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; "$PY" -V; } >> "$OUT/device.txt" 2>&1
pipi() { "$PY" -m pip install --no-index --quiet "$@" || "$PY" -m pip install --no-index --quiet --break-system-packages "$@"; }
if [ -d wheels-gpu ]; then
  pipi --no-deps wheels-gpu/*.whl >> "$OUT/install.log" 2>&1 && log "installed wheels-gpu" || log "wheels-gpu install FAILED"
fi
if compgen -G ".gpu-stash/*.part-*" > /dev/null; then
  mkdir -p .gpu-stash/dali && cat .gpu-stash/*.part-* | tar -xf - -C .gpu-stash/dali \
    && pipi --find-links .gpu-stash/dali .gpu-stash/dali/nvidia_dali*.whl >> "$OUT/install.log" 2>&1 \
    && log "installed DALI" || log "DALI install FAILED"
fi
"$PY" -P -c "import gpu_mm, gpu_mm.kernels, torch; print('gpu_mm', gpu_mm.__file__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" >> "$OUT/device.txt" 2>&1
# Warnings are reported, not fatal here: the GPU machine's package versions differ from CI's.
timeout 300 "$PY" -P -m pytest -q -m cuda -W default -p no:cacheprovider --junitxml="$OUT/cuda-tests.xml" tests \
  > "$OUT/cuda-tests.txt" 2>&1
log "cuda tests rc=$?"
timeout 200 "$PY" -P benchmarks/gpu_bench.py --out "$OUT" > "$OUT/gpu_bench.txt" 2>&1
log "gpu bench rc=$?"
tail -5 "$OUT/cuda-tests.txt"
tail -40 "$OUT/gpu_bench.txt"
