#!/usr/bin/env bash
# The one prepared device run (benchmarks/GPU_CHECK.md): the `cuda` tests and the GPU benchmark on the
# project's source, everything written to $OUT (8 files at most). Run from the
# repository root on the GPU machine with
# `.whl/` carried (PyAV). Budget: the tests get 150 s, the benchmark 150 s, install and layout ~20 s, so the
# call ends within ~6 minutes; with a cold start (1-2 minutes) that is ~8 of the session's 15, leaving a
# rerun on the warm machine.
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
log() { echo "[gpu_check] $*" | tee -a "$OUT/device.txt"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; "$PY" -V; } >> "$OUT/device.txt" 2>&1
# Carried wheels into a private folder (nothing of the image changes); DALI too if a previous call joined it.
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >> "$OUT/install.log" 2>&1 \
    && log "installed $(ls .whl)" || log "wheel install FAILED (see install.log)"
else
  log "no .whl/ carried: video tests that need PyAV will skip"
fi
if compgen -G "/tmp/dali-wheels/*.whl" > /dev/null; then
  # Without resolving: pip's resolver under --target does not count the image's own packages (numpy, which the
  # parts leave out, failed the install on an H200 on 2026-11-28). Wheels of packages the image has stay out.
  need=()
  for w in /tmp/dali-wheels/*.whl; do
    name=$(basename "$w"); name=${name%%-*}
    "$PY" -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$name" 2> /dev/null || need+=("$w")
  done
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "${need[@]}" >> "$OUT/install.log" 2>&1 \
    && PYTHONPATH=/tmp/site "$PY" -c "import nvidia.dali.experimental.dynamic" >> "$OUT/install.log" 2>&1 \
    && log "installed DALI: $(cd /tmp/dali-wheels && for w in "${need[@]}"; do basename "$w"; done | tr '\n' ' ')" \
    || log "DALI install FAILED (see install.log)"
fi
# The checkout itself (gpu_mm/kernels links to kernels/, so gpu_mm.kernels imports from it), not a wheel built earlier.
[ -f gpu_mm/kernels/normalize_patchify.py ] || { log "gpu_mm/kernels does not lead to kernels/: was the link carried?"; exit 1; }
export PYTHONPATH=$PWD:/tmp/site
"$PY" -c "import gpu_mm, gpu_mm.kernels.normalize_patchify, torch; print('gpu_mm', gpu_mm.__file__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" >> "$OUT/device.txt" 2>&1
# A module that cannot be imported here (the image's versions differ from CI's) must not stop the others.
# Warnings are reported, not fatal: the GPU machine's package versions differ from CI's.
timeout "${GPU_CHECK_TESTS_S:-150}" "$PY" -m pytest -q -m cuda -W default -p no:cacheprovider --continue-on-collection-errors --junitxml="$OUT/cuda-tests.xml" ${GPU_CHECK_TEST_PATHS:-tests} \
  > "$OUT/cuda-tests.txt" 2>&1
log "cuda tests rc=$?"
# Where it matters most, beside a GPU: the CPU path (import, every family, both APIs) initialises no CUDA.
# (Its cuda-marked neighbour, nvidia-smi's view of a CPU nvImageCodec decoder, ran with the cuda tests above.)
timeout 120 "$PY" -m pytest -q -W default -p no:cacheprovider tests/test_no_cuda_context.py -m "not cuda" \
  >> "$OUT/cuda-tests.txt" 2>&1
log "no-CUDA-context test rc=$?"
timeout 60 "$PY" benchmarks/gpu_jpeg_diff.py --out "$OUT" > /dev/null 2>> "$OUT/device.txt"
log "jpeg diff rc=$?"
# Stacks dumped 10 s before the limit: a run with DALI printed nothing in 70 s (H200, 2026-11-28), cause unknown.
BENCH_S=${GPU_CHECK_BENCH_S:-150}
timeout "$BENCH_S" "$PY" benchmarks/gpu_bench.py --out "$OUT" --deadline-s $((BENCH_S - 10)) ${GPU_CHECK_BENCH_ARGS:-} \
  > "$OUT/gpu_bench.txt" 2>&1
log "gpu bench rc=$?"
# Optional (GPU_CHECK_NODE_SERVICE=1; ~1-2 minutes): 4 front ends each with a CUDA preprocessor against the same 4 as
# clients of one service on the GPU: CUDA contexts and device memory besides wall time, latency and PSS.
if [ "${GPU_CHECK_NODE_SERVICE:-0}" = 1 ]; then
  timeout "${GPU_CHECK_NODE_SERVICE_S:-150}" "$PY" benchmarks/node_service.py --device cuda --out /tmp/node_service.json \
    >> "$OUT/gpu_bench.txt" 2>&1
  log "node service rc=$?"
  cat /tmp/node_service.json >> "$OUT/gpu_bench.txt" 2> /dev/null
fi
# The kernel's counters (issue 4: 28% of a device copy's bandwidth; which cost dominates was not known), where
# Nsight Compute is installed: second launches, speed of light, memory, launch and occupancy.
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | head -1)
if [ -n "$NCU" ]; then
  # The default and the tile variants (the row and block kernels' counters are in the H200's run5-7 files).
  timeout "${GPU_CHECK_NCU_S:-60}" "$NCU" -k regex:normalize_patchify --launch-skip 3 --launch-count 3 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy \
    "$PY" -c "import torch; from gpu_mm.kernels.normalize_patchify import fused_normalize_patchify as f
x = torch.randint(0, 256, (60, 3, 560, 1008), dtype=torch.uint8, device='cuda')
[f(x, variant=v) for v in ('block-lut', 'tile', 'tile-lut') * 2]; torch.cuda.synchronize()" > "$OUT/ncu.txt" 2>&1
  log "ncu rc=$? ($NCU)"
else
  log "no ncu on this machine"
fi
tail -5 "$OUT/cuda-tests.txt"
tail -40 "$OUT/gpu_bench.txt"
