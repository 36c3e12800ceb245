#!/usr/bin/env bash
# The test suite against the newest releases inside pyproject.toml's ranges: a clean clone of the committed tree,
# a fresh virtual environment resolved without constraints.txt, then the README's test command from the clone's
# root. Prints the versions that differ from constraints.txt and what broke; exits with pytest's status.
# Run it before each submission; fix or bound (with a reason in a comment) what it finds.
#
#   tools/check_newest.sh [REPORT]   (default: bench-out/check_newest.txt; the work folder is removed after)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPORT=$(realpath -m "${1:-$ROOT/bench-out/check_newest.txt}")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$(dirname "$REPORT")"
exec > >(tee "$REPORT") 2>&1

echo "check_newest: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git -C "$ROOT" rev-parse --short HEAD), $(python3 --version)"
git clone -q "$ROOT" "$WORK/src" && cd "$WORK/src" || exit 2
python3 -m venv "$WORK/venv"
PY=$WORK/venv/bin/python
"$PY" -m pip install -q --upgrade pip > "$WORK/pip.log" 2>&1
# Every extra (CI's and the quick start's), newest first; sglang, xgrammar and vllm as .ci/run installs them (pinned, --no-deps:
# their wheels pin older torch and transformers).
if ! "$PY" -m pip install -q --upgrade --upgrade-strategy eager -e ".[test,bench,dali,sglang,ray,vllm]" >> "$WORK/pip.log" 2>&1 \
   || ! "$PY" -m pip install -q --no-deps -c constraints.txt sglang xgrammar vllm >> "$WORK/pip.log" 2>&1; then
  echo "install FAILED:"; grep -v "^WARNING: Location" "$WORK/pip.log" | tail -20
  exit 2
fi

echo "== versions that differ from constraints.txt (pinned -> newest)"
"$PY" -m pip freeze --exclude gpu-mm 2> /dev/null > "$WORK/newest.txt"
"$PY" - constraints.txt "$WORK/newest.txt" <<'EOF'
import sys
def pins(path):
    lines = (line.split("#")[0].strip() for line in open(path))
    return dict(line.split("==", 1) for line in lines if "==" in line)
pinned, newest = pins(sys.argv[1]), pins(sys.argv[2])
for name in sorted(pinned.keys() | newest.keys(), key=str.lower):
    if pinned.get(name) != newest.get(name):
        print(f"  {name:36} {pinned.get(name, '(none)')} -> {newest.get(name, '(none)')}")
EOF

echo "== python -m pytest -q (the README's test command)"
start=$(date +%s)
"$PY" -m pytest -q -p no:cacheprovider > "$WORK/pytest.txt" 2>&1
rc=$?
grep -E "^(FAILED|ERROR) " "$WORK/pytest.txt" | head -50
tail -1 "$WORK/pytest.txt"
echo "pytest rc=$rc in $(( $(date +%s) - start )) s"
exit "$rc"
