#!/usr/bin/env bash
# Branch coverage of the CPU suite, child processes included (config: [tool.coverage] in pyproject.toml), and
# the list of what never runs without a GPU: benchmarks/cuda_only.py writes it to benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf bench-out/coverage && mkdir -p bench-out/coverage
"$PY" -m coverage run -m pytest -q -p no:cacheprovider
"$PY" -m coverage combine -q
"$PY" -m coverage json -q -o bench-out/coverage/coverage.json --omit '/tmp/*'
"$PY" benchmarks/cuda_only.py bench-out/coverage/coverage.json "benchmarks/results/coverage_cpu_$(date -u +%F).md"
