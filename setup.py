"""Build of gpu-mm's C extensions (the metadata is in pyproject.toml):

- ``gpu_mm._cpu_patch``: normalize + patchify in one pass on the CPU;
- ``gpu_mm._ingest``: the copies and the string scan of parsing a request body, without the GIL.

Both are optional: where no C compiler is found (or it fails) gpu-mm installs without them, warns, and runs
the same computation in Python and torch (the same results, slower; ``gpu_mm.ops.cpu_kernel_available()`` and
``gpu_mm.serve._ingest is None`` say which is in use).
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
            self.warn(f"gpu-mm's C extensions not built ({e}); gpu-mm will use its Python and torch paths")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except (CCompilerError, ExecError, PlatformError, OSError) as e:
            self.warn(f"{ext.name} not built ({e}); gpu-mm will use its Python and torch path instead")


setup(
    ext_modules=[Extension("gpu_mm._cpu_patch", ["gpu_mm/_cpu_patch.c"], extra_compile_args=FLAGS),
                 Extension("gpu_mm._ingest", ["gpu_mm/_ingest.c"], extra_compile_args=FLAGS)],
    cmdclass={"build_ext": OptionalBuildExt},
)
