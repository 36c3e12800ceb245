"""transformers' own processor and feature-extractor test mixins (``tests/test_image_processing_common.py``,
``tests/test_video_processing_common.py``) from the source distribution of the installed transformers.

The sdist is downloaded from the package registry (``pip download``) into ``.upstream/`` at the repository root
(git-ignored) the first time a test asks for it; ``.ci/run`` fetches it ahead of the tests. Nothing of it is
copied into the project.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import types

import transformers

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = ROOT / ".upstream"
SHIM = pathlib.Path(__file__).resolve().parent / "upstream_shim"
MIXINS = ("test_image_processing_common.py", "test_video_processing_common.py", "test_processing_common.py",
          "test_sequence_feature_extraction_common.py", "test_feature_extraction_common.py")


def tests_dir() -> pathlib.Path | str:
    """The folder holding transformers' test mixins for the installed version, or why it is not available."""
    version = transformers.__version__
    target = CACHE / f"transformers-{version}" / "tests"
    if all((target / name).is_file() for name in MIXINS):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"transformers=={version}", "-d", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            return f"downloading transformers {version}'s source distribution timed out"
        sdists = sorted(pathlib.Path(tmp).glob("transformers-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            tail = (proc.stderr.strip().splitlines() or ["no sdist"])[-1]
            return f"cannot download transformers {version}'s source distribution: {tail}"
        prefix = f"transformers-{version}/tests/"
        with tarfile.open(sdists[0]) as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and m.name.startswith(prefix) and "/" not in m.name[len(prefix):]]
            tar.extractall(CACHE, members=members, filter="data")
    missing = [name for name in MIXINS if not (target / name).is_file()]
    return f"transformers {version}'s sdist has no {missing}" if missing else target


def import_mixins() -> tuple[object, object, object, object] | str:
    """(image, video, processor, sequence feature-extractor mixin modules), or why they cannot be imported here."""
    where = tests_dir()
    if isinstance(where, str):
        return where
    for path in (str(where), str(SHIM)):
        if path not in sys.path:
            sys.path.append(path)
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import test_image_processing_common as image
        import test_processing_common as processing
        import test_video_processing_common as video

        # This one imports its base relatively: load it as a module of a package whose folder is the mixins'.
        if "upstream_transformers_tests" not in sys.modules:
            package = types.ModuleType("upstream_transformers_tests")
            package.__path__ = [str(where)]
            sys.modules["upstream_transformers_tests"] = package
        sequence = importlib.import_module("upstream_transformers_tests.test_sequence_feature_extraction_common")
    except ImportError as exc:  # e.g. `parameterized`, which the mixins import, is not installed
        return f"transformers' test mixins do not import: {exc}"
    return image, video, processing, sequence
