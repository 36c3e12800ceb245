"""The prepared device run's mechanics, on the CPU: DALI's wheels carried in parts (names globs see, every
part checked, joined, installed without an index), and the source laid out as the distribution ships it
(``kernels/`` as ``gpu_mm.kernels``) so the device runs the checkout, not a wheel built earlier."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PARTS = ROOT / "benchmarks" / "dali_parts.sh"


def _bash(script: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -euo pipefail; . {PARTS}; {script}"], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _wheel(folder: pathlib.Path) -> pathlib.Path:
    """A minimal real wheel (pure Python) that pip can install offline."""
    path = folder / "gpumm_probe-0.1-py3-none-any.whl"
    files = {
        "gpumm_probe/__init__.py": "VALUE = 42\n",
        "gpumm_probe-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: gpumm-probe\nVersion: 0.1\n",
        "gpumm_probe-0.1.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    record = "".join(f"{name},,\n" for name in files) + "gpumm_probe-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr("gpumm_probe-0.1.dist-info/RECORD", record)
    return path


def test_wheels_travel_in_parts_and_install_offline(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels)
    (wheels / "big.bin").write_bytes(os.urandom(3 * 2**20 + 123))  # more than one part
    r = _bash("dali_split wheels .whl-dali 1", tmp_path)
    assert r.returncode == 0, r.stderr
    parts = sorted(p.name for p in tmp_path.glob(".whl-dali-*"))
    assert parts == [".whl-dali-1", ".whl-dali-2", ".whl-dali-3", ".whl-dali-4"]
    assert all(not f.name.startswith(".") for d in tmp_path.glob(".whl-dali-*") for f in d.iterdir())
    # Each part arrives in a call of its own and is stashed; then the parts are checked and joined.
    for n in range(1, 5):
        assert _bash(f"dali_stash .whl-dali-{n} stash", tmp_path).returncode == 0
    r = _bash("dali_join stash joined", tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "joined" / "big.bin").read_bytes() == (wheels / "big.bin").read_bytes()
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
                          str(site), *map(str, (tmp_path / "joined").glob("*.whl"))],
                         capture_output=True, text=True, timeout=120)
    assert pip.returncode == 0, pip.stderr
    probe = subprocess.run([sys.executable, "-c", "import gpumm_probe; print(gpumm_probe.VALUE)"],
                           env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "42"


def test_a_missing_part_is_named_not_installed(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "big.bin").write_bytes(os.urandom(2 * 2**20 + 5))
    assert _bash("dali_split wheels .whl-dali 1", tmp_path).returncode == 0
    for n in (1, 2):  # the third part never came
        _bash(f"dali_stash .whl-dali-{n} stash", tmp_path)
    r = _bash("dali_join stash joined", tmp_path)
    assert r.returncode != 0 and "parts missing or damaged" in r.stderr


def test_source_layout_imports_kernels_from_the_checkout(tmp_path):
    """What gpu_check.sh does before the tests: the checkout's gpu_mm with kernels/ inside, run with -P."""
    src = tmp_path / "src"
    r = subprocess.run(["bash", "-c", 'mkdir -p "$SRC" && cp -r gpu_mm "$SRC"/ && cp -r kernels "$SRC"/gpu_mm/kernels'],
                       cwd=ROOT, env={**os.environ, "SRC": str(src)}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    code = "import gpu_mm, gpu_mm.kernels; print(gpu_mm.__file__); print(gpu_mm.kernels.__file__)"
    env = {**os.environ, "PYTHONPATH": str(src), "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-P", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert all(line.startswith(str(src)) for line in out.stdout.split())


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_check_dali.sh", "fetch_gpu_wheels.sh", "dali_parts.sh"])
def test_device_scripts_parse(script):
    r = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
