"""The repository's layout against the packages installed beside it: nothing at the top of a checkout may take
an import name that another distribution owns (``python -m pytest`` and any ``python`` started there put the
checkout first on ``sys.path``), and the Triton kernels in ``kernels/`` import as ``gpu_mm.kernels`` only."""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
OURS = {"gpu-mm", "gpu_mm"}


def _top_level_names(root: pathlib.Path) -> dict[str, str]:
    """Import names a checkout makes importable as regular modules or packages, with what provides each.

    A folder without ``__init__.py`` is left out: it can only become a namespace package, which any installed
    regular package or module of the same name takes precedence over."""
    names = {}
    for entry in root.iterdir():
        if entry.is_dir() and entry.name.isidentifier() and (entry / "__init__.py").exists():
            names[entry.name] = f"{entry.name}/__init__.py"
        elif entry.is_file() and entry.suffix == ".py" and entry.stem.isidentifier():
            names[entry.stem] = entry.name
    return names


def test_no_top_level_name_in_the_checkout_is_owned_by_another_distribution():
    owners = importlib.metadata.packages_distributions()
    names = _top_level_names(ROOT)
    assert "gpu_mm" in names  # the walk found the package itself
    clashes = {name: owners[name] for name in names if set(owners.get(name, ())) - OURS}
    assert not clashes, f"top-level names in the checkout that installed distributions own: {clashes}"


def test_the_walk_sees_a_regular_package_and_a_module_but_not_a_namespace_folder(tmp_path):
    """The check above can fail: a folder with ``__init__.py`` and a ``.py`` file at the top are names."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("")
    (tmp_path / "setup.py").write_text("")
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "a.py").write_text("")
    (tmp_path / ".venv").mkdir()
    assert _top_level_names(tmp_path) == {"kernels": "kernels/__init__.py", "setup": "setup.py"}


def test_kernels_folder_is_not_a_package():
    assert (ROOT / "kernels" / "normalize_patchify.py").exists()
    assert not (ROOT / "kernels" / "__init__.py").exists()


def _from_root(code: str) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` started in the repository root, as a user of a checkout would (the root first on
    ``sys.path``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_import_kernels_from_the_root_finds_the_installed_distribution():
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels is not installed here")
    r = _from_root("import kernels; print(kernels.__file__)")
    assert r.returncode == 0, r.stderr[-2000:]
    found = pathlib.Path(r.stdout.strip()).resolve()
    assert ROOT / "kernels" not in found.parents, found


@pytest.mark.slow
def test_transformers_hub_kernels_imports_from_the_root():
    pytest.importorskip("transformers")
    r = _from_root("import transformers.integrations.hub_kernels")
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_gpu_mm_kernels_are_the_checkout_kernels_folder():
    """From a plain checkout (no install: the root on ``sys.path``, site-packages' gpu-mm not consulted first),
    ``gpu_mm.kernels`` is the top-level ``kernels/`` folder."""
    code = "import gpu_mm.kernels.runtime as r, gpu_mm; print(r.__file__); print(gpu_mm.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    r = subprocess.run([sys.executable, "-P", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    runtime, package = (pathlib.Path(line) for line in r.stdout.split())
    assert runtime.resolve() == ROOT / "kernels" / "runtime.py"
    assert package.resolve() == ROOT / "gpu_mm" / "__init__.py"


def test_every_package_folder_ships():
    """The wheel holds what a checkout imports: every folder of gpu_mm with Python files is a listed package
    (gpu_mm.media.video was missing, so a non-editable install lacked every video decoder)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(pathlib.Path(folder).relative_to(ROOT).parts)
               for folder, _, files in os.walk(ROOT / "gpu_mm", followlinks=True)
               if any(f.endswith(".py") for f in files)}
    assert folders == listed
