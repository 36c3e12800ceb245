"""The prepared device run's mechanics, on the CPU: DALI's wheels carried in parts (names globs see, every
part checked, joined, installed without an index), and the device scripts parse."""

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


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_check_dali.sh", "fetch_gpu_wheels.sh", "dali_parts.sh"])
def test_device_scripts_parse(script):
    r = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_a_stripped_wheel_keeps_its_code_and_installs_offline(tmp_path):
    """PyNvVideoCodec's wheel carries FFmpeg's sources and samples; dropped, it still installs and imports."""
    path = _wheel(tmp_path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("gpumm_probe-0.1.data/data/external/src.c", "int main(){}\n" * 1000)
        z.writestr("samples/demo.ipynb", "{}")
    before = zipfile.ZipFile(path).read("gpumm_probe/__init__.py")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "strip_wheel.py"), str(path),
                        "gpumm_probe-0.1.data/", "samples/"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "2 members dropped" in r.stdout, r.stderr
    names = zipfile.ZipFile(path).namelist()
    assert not [n for n in names if n.startswith(("samples/", "gpumm_probe-0.1.data/"))]
    assert zipfile.ZipFile(path).read("gpumm_probe/__init__.py") == before
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site),
                        str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-c", "import gpumm_probe; print(gpumm_probe.VALUE)"],
                       env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "42"
