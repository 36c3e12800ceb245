#!/usr/bin/env bash
# Optional DALI calls (benchmarks/GPU_CHECK.md): `bash benchmarks/gpu_check_dali.sh stash N` in the call that
# carries .whl-dali-N (back to back, while the machine stays warm), then `bash benchmarks/gpu_check_dali.sh
# join` before gpu_check.sh. The stash lives in /tmp, which outlives a call but not the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/dali_parts.sh
. benchmarks/dali_parts.sh
case "${1:-}" in
  stash) dali_stash ".whl-dali-$2" /tmp/dali-stash && ls -la /tmp/dali-stash ;;
  join) dali_join /tmp/dali-stash /tmp/dali-wheels && ls /tmp/dali-wheels ;;
  *) echo "usage: $0 stash N | join" >&2; exit 2 ;;
esac
