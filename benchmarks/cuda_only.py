"""List the library's statements the CPU suite never runs, split into those behind a CUDA guard (they can
only run on a GPU: the surface that must be right by reading) and the rest (a gap in the CPU tests).

    python benchmarks/cuda_only.py coverage.json OUT.md

A statement counts as CUDA-only when it, or the condition of a block enclosing it, or the function it is in,
names CUDA (``cuda``, a slot's stream, ``pin_memory``, ``nvjpeg``, DALI's ``mixed`` backend, an IPC share).
The benchmark harness and the CLI's bench command are left out: benchmarks are not tests.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

CUDA = re.compile(r'cuda|slot\.stream|\.stream is|stream_priority|pin_memory|"pinned"|nvjpeg|nvdec|\bdali\b|'
                  r"\bmixed\b|reduce_tensor|\.share\(", re.I)
SKIP = ("gpu_mm/bench/", "gpu_mm/cli.py")


def guarded(lines: list[str], n: int) -> bool:
    """Whether line ``n`` (1-based) or a block or function enclosing it names CUDA."""
    text = lines[n - 1]
    if CUDA.search(text):
        return True
    indent = len(text) - len(text.lstrip())
    for k in range(n - 2, -1, -1):
        line = lines[k]
        if not line.strip():
            continue
        ind = len(line) - len(line.lstrip())
        if ind < indent:
            head = line.strip()
            if head.startswith(("if ", "elif ", "else", "with ", "def ", "try", "except", "for ", "while ")) \
                    and CUDA.search(head):
                return True
            if head.startswith(("def ", "class ")) and ind == 0:
                return False
            indent = ind
    return False


def main() -> int:
    data = json.loads(pathlib.Path(sys.argv[1]).read_text())
    cuda: dict[str, list[tuple[int, str]]] = {}
    other: dict[str, list[tuple[int, str]]] = {}
    for path, f in sorted(data["files"].items()):
        if path.startswith(SKIP) or not f["missing_lines"]:
            continue
        lines = pathlib.Path(path).read_text().splitlines()
        for n in f["missing_lines"]:
            (cuda if guarded(lines, n) else other).setdefault(path, []).append((n, lines[n - 1].strip()))
    total = data["totals"]
    out = [
        f"# What the CPU suite never runs ({pathlib.Path(sys.argv[2]).stem.split('_')[-1]})",
        "",
        f"Branch coverage of the CPU suite, child processes included: {total['percent_covered_display']}% of "
        f"the library's statements and branches (benchmark harness and CLI bench left out of the lists below).",
        "",
        f"- behind a CUDA guard (run only on a GPU): {sum(map(len, cuda.values()))} statements",
        f"- other statements the CPU suite misses: {sum(map(len, other.values()))}",
        "",
    ]
    for title, group in (("Behind a CUDA guard", cuda), ("Missed otherwise", other)):
        out += [f"## {title}", ""]
        for path, rows in group.items():
            out.append(f"- `{path}`: " + ", ".join(f"{n}" for n, _ in rows))
            out += [f"  - {n}: `{text[:100]}`" for n, text in rows]
        out.append("")
    pathlib.Path(sys.argv[2]).write_text("\n".join(out))
    print("\n".join(out[:8]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
