"""gpu-mm's modules import one way down: no import circle, counting imports inside functions (a lazy import
that closes a circle still ties the modules together), read from the source without importing it."""

from __future__ import annotations

import ast
import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _modules(root: pathlib.Path) -> dict[str, tuple[pathlib.Path, bool]]:
    """Module name -> (file, is a package's ``__init__``), for gpu_mm (its kernels link followed) and the vLLM
    entry point."""
    mods = {"gpu_mm_vllm_entry": (root / "gpu_mm_vllm_entry.py", False)}
    for folder, _, files in os.walk(root / "gpu_mm", followlinks=True):
        for name in files:
            if name.endswith(".py"):
                parts = list(pathlib.Path(folder, name).relative_to(root).with_suffix("").parts)
                init = parts[-1] == "__init__"
                mods[".".join(parts[:-1] if init else parts)] = (pathlib.Path(folder, name), init)
    return mods


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project's modules it imports anywhere in its body. ``from package import name`` counts as
    importing the submodule ``package.name`` when there is one, else the package."""
    mods = _modules(root)
    graph: dict[str, set[str]] = {}
    for mod, (path, init) in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if init else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    package = ".".join(base + ([node.module] if node.module else []))
                else:
                    package = node.module or ""
                targets = [f"{package}.{a.name}" if f"{package}.{a.name}" in mods else package for a in node.names]
            else:
                continue
            for target in targets:
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target != mod:
                    deps.add(target)
        graph[mod] = deps
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_circle():
    graph = import_graph()
    assert "gpu_mm.kernels.runtime" in graph and "gpu_mm.pipeline" in graph["gpu_mm"]  # the walk saw the tree
    found = circles(graph)
    detail = [[f"{m} -> {sorted(graph[m] & set(c))}" for m in c] for c in found]
    assert not found, f"import circles: {detail}"


def test_a_circle_through_a_lazy_import_is_found(tmp_path):
    """The check can fail: a function-level import that closes a loop, and a submodule importing its package."""
    (tmp_path / "gpu_mm" / "sub").mkdir(parents=True)
    (tmp_path / "gpu_mm_vllm_entry.py").write_text("import os\n")
    (tmp_path / "gpu_mm" / "__init__.py").write_text("from .a import f\n")
    (tmp_path / "gpu_mm" / "a.py").write_text("from .sub import b\n\ndef f():\n    return b\n")
    (tmp_path / "gpu_mm" / "sub" / "__init__.py").write_text("")
    (tmp_path / "gpu_mm" / "sub" / "b.py").write_text("def g():\n    from ..a import f\n    return f\n")
    (tmp_path / "gpu_mm" / "c.py").write_text("import gpu_mm\n")
    (tmp_path / "gpu_mm" / "d.py").write_text("from gpu_mm import c\n")
    graph = import_graph(tmp_path)
    assert graph["gpu_mm.sub.b"] == {"gpu_mm.a"} and graph["gpu_mm.d"] == {"gpu_mm.c"}
    assert circles(graph) == [["gpu_mm.a", "gpu_mm.sub.b"]]
    (tmp_path / "gpu_mm" / "__init__.py").write_text("from .a import f\nfrom .c import *\n")
    assert sorted(circles(import_graph(tmp_path))) == [["gpu_mm", "gpu_mm.c"], ["gpu_mm.a", "gpu_mm.sub.b"]]


# What each part may not import (docs/architecture.md): a model family is a pure spec, the tensor ops and kernels
# know nothing of requests, media nothing of models, the processor no model family, and only the CLI the bench.
FORBIDDEN = {
    "gpu_mm.models": ("gpu_mm.pipeline", "gpu_mm.processor", "gpu_mm.slots", "gpu_mm.media", "gpu_mm.serve",
                      "gpu_mm.integrations", "gpu_mm.cli", "gpu_mm.bench", "gpu_mm._procslots"),
    "gpu_mm.ops": ("gpu_mm.pipeline", "gpu_mm.models", "gpu_mm.media", "gpu_mm.processor", "gpu_mm.serve"),
    "gpu_mm.kernels": ("gpu_mm.pipeline", "gpu_mm.models", "gpu_mm.media", "gpu_mm.processor", "gpu_mm.serve"),
    "gpu_mm.media": ("gpu_mm.models", "gpu_mm.pipeline", "gpu_mm.processor", "gpu_mm.serve", "gpu_mm.integrations"),
    "gpu_mm.processor": ("gpu_mm.models", "gpu_mm.pipeline", "gpu_mm.media"),
    "gpu_mm.pipeline": ("gpu_mm.serve", "gpu_mm.integrations", "gpu_mm.cli", "gpu_mm.bench", "gpu_mm.processor"),
}


def _within(module: str, part: str) -> bool:
    return module == part or module.startswith(part + ".")


def test_arrows_go_one_way_down():
    graph = import_graph()
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() for part, banned in FORBIDDEN.items()
                   if _within(m, part) for d in deps if any(_within(d, b) for b in banned))
    assert not wrong, f"imports against the layering: {wrong}"
    bench_users = sorted(m for m, deps in graph.items()
                         if not _within(m, "gpu_mm.bench") and any(_within(d, "gpu_mm.bench") for d in deps))
    assert bench_users == ["gpu_mm.cli"]
