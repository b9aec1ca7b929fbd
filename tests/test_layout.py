"""The package's architecture, read from its source with ``ast``: layers import only downward, no import cycle,
no file over 300 lines, no package module named like a test, and the light modules load without Lightning."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "adapt"

# the layers, bottom to top: a module may import modules of its own layer or below, never above
LAYERS = [
    ["adapt", "adapt.errors"],
    ["adapt.data", "adapt.nets", "adapt.losses", "adapt.metrics", "adapt.intervals", "adapt.inference"],
    ["adapt.checkpoints", "adapt.report", "adapt.plots", "adapt.recipe"],
    ["adapt.tasks", "adapt.callbacks"],
    ["adapt.workflows"],
    ["adapt.commands", "adapt.cli"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of a module: that of the longest prefix listed in LAYERS."""
    best = max((prefix for row in LAYERS for prefix in row if module == prefix or module.startswith(prefix + ".")),
               key=len)
    return next(i for i, row in enumerate(LAYERS) if best in row)


def imports(path: Path, name: str | None = None) -> set[str]:
    """adapt modules imported anywhere in the file (function-level imports too); ``from adapt.x import y`` counts
    as an import of ``adapt.x.y`` when that is a module, else of ``adapt.x``."""
    found = set()
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "adapt"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "adapt":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found - {name or module_name(path)}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_row():
    """A new top-level module is placed in LAYERS (else it would fall to layer 0 by the prefix ``adapt``)."""
    placed = {prefix for row in LAYERS for prefix in row} - {"adapt"}
    unplaced = [m for m in graph() if m != "adapt" and not any(m == p or m.startswith(p + ".") for p in placed)]
    assert not unplaced, f"modules missing from tests/test_layout.py's LAYERS: {unplaced}"


def test_imports_go_only_downward():
    upward = [f"{m} (layer {layer(m)}) imports {i} (layer {layer(i)})"
              for m, deps in graph().items() for i in sorted(deps) if layer(i) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith("adapt.") and nxt not in edges:
                continue
            if state.get(nxt) == 1:
                return path + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in edges:
        if start not in state and (cycle := visit(start, [start])):
            assert False, " -> ".join(cycle)


def test_the_layout_check_catches_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"  # as if it were adapt/nets/probe.py: a net importing a workflow in a function
    probe.write_text("def f():\n    from adapt.workflows.evaluate import evaluate\n")
    found = imports(probe, "adapt.nets.probe")
    assert found == {"adapt.workflows.evaluate"} and layer("adapt.workflows.evaluate") > layer("adapt.nets.probe")


def test_imports_are_absolute():
    """Relative imports would slip past the checks above: adapt imports itself by absolute names only."""
    relative = [f"{p.relative_to(PACKAGE.parent)}:{n.lineno}" for p in PACKAGE.rglob("*.py")
                for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert not relative, relative


def test_files_stay_under_300_lines_and_no_module_is_named_like_a_test():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 300]
    assert not long, long
    assert not [p for p in PACKAGE.rglob("test*.py")]


def test_errors_and_datasets_import_without_lightning():
    code = ("import sys, adapt.errors, adapt.data, adapt.data.folder, adapt.data.datasets; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
