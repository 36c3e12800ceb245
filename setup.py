"""Build of gpu-mm's one C extension, gpu_mm._cpu_patch (the metadata is in pyproject.toml).

The extension is optional: where no C compiler is found (or it fails) gpu-mm installs without it, warns, and
runs the same computation with torch ops (bit-identical, slower; ``gpu_mm.ops.cpu_kernel_available()`` says
which is in use).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

# -O3 for the vectorizer; never -ffast-math (the kernel's float32 arithmetic must stay IEEE, in order).
FLAGS = ["-O3", "-std=c11", "-fno-fast-math", "-fno-strict-aliasing"] if os.name == "posix" else []


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, ExecError, PlatformError, OSError) as e:
            self.warn(f"gpu_mm._cpu_patch not built ({e}); gpu-mm will use its torch path on the CPU")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except (CCompilerError, ExecError, PlatformError, OSError) as e:
            self.warn(f"{ext.name} not built ({e}); gpu-mm will use its torch path on the CPU")


setup(
    ext_modules=[Extension("gpu_mm._cpu_patch", ["gpu_mm/_cpu_patch.c"], extra_compile_args=FLAGS)],
    cmdclass={"build_ext": OptionalBuildExt},
)
