"""vLLM calls gpu-mm's entry point in each of its processes: with ``GPU_MM_VLLM`` unset it must not even import
gpu_mm (about a second per process). No vllm needed: the entry point imports nothing of it when off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "import sys, gpu_mm_vllm_entry; gpu_mm_vllm_entry.register(); print('gpu_mm' in sys.modules)"


@pytest.mark.parametrize("value", [None, "", "0", "off", " False "])
def test_off_imports_nothing(value):
    env = {k: v for k, v in os.environ.items() if k != "GPU_MM_VLLM"}
    if value is not None:
        env["GPU_MM_VLLM"] = value
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_declared_as_vllms_general_plugin():
    from importlib.metadata import entry_points

    ours = [e for e in entry_points(group="vllm.general_plugins") if e.name == "gpu_mm"]
    assert [e.value for e in ours] == ["gpu_mm_vllm_entry:register"]


def test_entry_point_and_plugin_agree_on_off():
    """The entry point decides "off" without importing gpu_mm; the plug-in parses the same variable: one set of
    values for both."""
    pytest.importorskip("vllm")
    import gpu_mm_vllm_entry
    from gpu_mm.integrations import vllm as plugin

    assert gpu_mm_vllm_entry.OFF == plugin.OFF
    for value in plugin.OFF:
        assert plugin.enabled_parts({"GPU_MM_VLLM": value}) == frozenset()
