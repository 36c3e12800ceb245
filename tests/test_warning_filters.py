"""gpu-mm changes no warning filter while it runs. ``warnings.catch_warnings`` swaps the process's filter list and is
not thread-safe: slot and planning threads would restore each other's filters (a filter of gpu-mm's left in the
process, an operator's lost, a warning let through as an error under ``-W error``; reproduced with four threads
decoding JPEGs). The one use left is torchvision's deprecated JPEG wrapper, called only when its registered ops are
not the ones gpu-mm knows."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gpu_mm"
FILTERING = {"catch_warnings", "simplefilter", "filterwarnings", "resetwarnings"}
ALLOWED = {("media/image.py", "_decode_through_wrapper")}


def _filter_changes(root: pathlib.Path) -> set[tuple[str, str]]:
    """(module, innermost enclosing function) of every ``warnings.<filtering call>`` under ``root``."""
    found: set[tuple[str, str]] = set()

    class Visitor(ast.NodeVisitor):
        def __init__(self, module: str) -> None:
            self.module, self.where = module, ["<module>"]

        def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
            self.where.append(node.name)
            self.generic_visit(node)
            self.where.pop()

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Call(self, node: ast.Call) -> None:
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in FILTERING and isinstance(f.value, ast.Name) \
                    and f.value.id == "warnings":
                found.add((self.module, self.where[-1]))
            self.generic_visit(node)

    for path in root.rglob("*.py"):
        Visitor(path.relative_to(root).as_posix()).visit(ast.parse(path.read_text(), str(path)))
    return found


def test_no_warning_filter_is_changed_outside_the_one_fallback():
    assert _filter_changes(PACKAGE) == ALLOWED


def test_the_scan_finds_a_filter_change(tmp_path):
    (tmp_path / "m.py").write_text("import warnings\nwarnings.simplefilter('ignore')\n\ndef f():\n    def g():\n"
                                   "        with warnings.catch_warnings():\n            pass\n")
    assert _filter_changes(tmp_path) == {("m.py", "<module>"), ("m.py", "g")}
