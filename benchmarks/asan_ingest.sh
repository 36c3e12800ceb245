#!/usr/bin/env bash
# gpu_mm/_ingest.c (the C that reads hostile request bodies) built with AddressSanitizer and UBSan, then fed
# 20,000 random and adversarial inputs: long_strings must equal a Python reading of JSON's string grammar,
# join must equal b"".join and ascii_text the ASCII decode of any span (None when it is not ASCII).
#   bash benchmarks/asan_ingest.sh   (needs gcc with libasan/libubsan; no torch import)
set -euo pipefail
PY=${PYTHON:-python}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
inc=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
suffix=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
gcc -O1 -g -std=c11 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -fPIC \
    -shared -I"$inc" "$(dirname "$0")/../gpu_mm/_ingest.c" -o "$out/_ingest$suffix"
cat > "$out/fuzz.py" <<'PYEOF'
import json, os, random, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import _ingest
from json_strings import long_strings_reference as reference

rng = random.Random(int(os.environ.get("SEED", "1")))
alphabet = b'"\\:AB= \n\x01{}[],'
for _ in range(20000):
    kind = rng.randrange(4)
    if kind == 0:
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
    elif kind == 1:
        raw = os.urandom(rng.randint(0, 200))
    elif kind == 2:
        raw = json.dumps({"v": ["A" * rng.randint(0, 300), "x\\" + "B" * rng.randint(0, 50)],
                          "k" * rng.randint(0, 20): 1}).encode()
    else:
        raw = b'"' * rng.randint(0, 5) + b"\\" * rng.randint(0, 5) + os.urandom(rng.randint(0, 20))
    m = rng.randint(1, 8)
    assert _ingest.long_strings(raw, m) == reference(raw, m), (raw, m)
    chunks = [raw[i : i + m] for i in range(0, len(raw), m)]
    assert _ingest.join(chunks) == raw
    a, b = sorted(rng.randint(0, len(raw)) for _ in range(2))
    text = _ingest.ascii_text(raw, a, b)
    assert text == (raw[a:b].decode("ascii") if raw[a:b].isascii() else None), (raw, a, b)
big = os.urandom(3 << 20)
assert _ingest.join([big[:1000], big[1000:]]) == big
print("asan_ingest: 20000 inputs, no sanitizer report, long_strings equal to the reference, join and ascii_text "
      "equal to Python's")
PYEOF
ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
    "$PY" "$out/fuzz.py" "$out" "$(cd "$(dirname "$0")/../tests" && pwd)"
