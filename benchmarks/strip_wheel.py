"""Drop from a wheel what an installation never imports (vendored sources, samples, benchmarks), in place, so that
the GPU check's wheels fit one device call's carry: ``python benchmarks/strip_wheel.py WHEEL PREFIX...``.

pip installs the result as it installs the original (it does not check the RECORD's entries against the archive);
the files that remain are the original's, byte for byte."""

from __future__ import annotations

import os
import sys
import zipfile


def strip_wheel(path: str, prefixes: tuple[str, ...]) -> int:
    """Rewrite ``path`` without the members whose names start with one of ``prefixes``; returns how many went."""
    tmp = f"{path}.tmp"
    dropped = 0
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(prefixes):
                dropped += 1
                continue
            dst.writestr(info, src.read(info.filename))
    os.replace(tmp, path)
    return dropped


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(f"usage: {sys.argv[0]} WHEEL PREFIX...")
    n = strip_wheel(sys.argv[1], tuple(sys.argv[2:]))
    print(f"{sys.argv[1]}: {n} members dropped, {os.path.getsize(sys.argv[1]) / 1e6:.1f} MB")
