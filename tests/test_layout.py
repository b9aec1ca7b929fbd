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
    ["adapt", "adapt.errors", "adapt.signals"],
    ["adapt.data", "adapt.nets", "adapt.losses", "adapt.metrics", "adapt.intervals", "adapt.inference",
     "adapt.domain_stats", "adapt.files", "adapt.provenance", "adapt.cost", "adapt.distributed",
     "adapt.optimization"],
    ["adapt.checkpoints", "adapt.report", "adapt.plots", "adapt.recipe", "adapt.catalogue"],
    ["adapt.tasks", "adapt.callbacks", "adapt.selection"],
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
    code = ("import sys, adapt.errors, adapt.data, adapt.data.folder, adapt.data.datasets, adapt.nets, adapt.files, "
            "adapt.provenance, adapt.domain_stats; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('pytorch_lightning', 'lightning', 'lightning_fabric')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


# one owner per concern: each of these functions is defined in its file and nowhere else under adapt/
OWNERS = {
    "atomic_write": "files.py", "atomic_save": "files.py", "publish_folder": "files.py",
    "all_reduce": "distributed.py", "convert_sync_batchnorm": "distributed.py",
    "versions": "provenance.py", "git_commit": "provenance.py", "rng_state": "provenance.py",
    "set_rng_state": "provenance.py",
    "frechet_distance": "domain_stats.py", "domain_classifier_accuracy": "domain_stats.py",
}
LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric")


def definitions(path: Path) -> set[str]:
    """Names of every function (module level, method or nested) and class defined in a file."""
    return {n.name for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def calls(path: Path, module: str, name: str) -> list[int]:
    """Lines of the file that call ``module.name(...)`` (e.g. ``os.replace``)."""
    return [n.lineno for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute) and n.func.attr == name
            and isinstance(n.func.value, ast.Name) and n.func.value.id == module]


def top_modules(path: Path) -> set[str]:
    """Top-level names of every module the file imports (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_each_concern_has_one_owner():
    """Atomic writes, publishing a folder, the DDP helpers, provenance and the domain statistics each live in one
    module; everything else calls them (a second copy, even a private one, is a second owner)."""
    copies = [f"{p.relative_to(PACKAGE.parent)} defines {name} (owner: adapt/{OWNERS[name]})"
              for p in sorted(PACKAGE.rglob("*.py")) for name in definitions(p) & set(OWNERS)
              if p.relative_to(PACKAGE).as_posix() != OWNERS[name]]
    assert not copies, "\n".join(copies)
    for name, owner in OWNERS.items():
        assert name in definitions(PACKAGE / owner), f"adapt/{owner} no longer defines {name}"


def test_only_adapt_files_renames_into_place():
    """A rename over a file or folder is how a write is published: only adapt.files does it (atomic_write,
    publish_folder)."""
    renames = [f"{p.relative_to(PACKAGE.parent)}:{line}" for p in sorted(PACKAGE.rglob("*.py"))
               if p != PACKAGE / "files.py" for line in calls(p, "os", "replace") + calls(p, "os", "rename")]
    assert not renames, renames


def test_the_owner_check_catches_a_second_copy(tmp_path):
    probe = tmp_path / "probe.py"  # as if it were adapt/workflows/probe.py: a private publish helper
    probe.write_text("import os\n\nclass Out:\n    def atomic_write(self):\n        os.replace('a', 'b')\n")
    assert definitions(probe) & set(OWNERS) == {"atomic_write"} and calls(probe, "os", "replace") == [5]


def test_no_test_tree_writer_ships_in_the_package():
    """The tiny fake dataset trees are written by tests/trees.py, not by the installed package."""
    writers = [f"{p.relative_to(PACKAGE.parent)}: {name}" for p in sorted(PACKAGE.rglob("*.py"))
               for name in definitions(p) if name.startswith("write_tiny")]
    assert not writers, writers
    assert "write_tiny_gta5" in definitions(Path(__file__).with_name("trees.py"))


def test_nets_and_data_import_no_lightning():
    """nets/ is plain torch (DDP helpers are in adapt.distributed); in data/ only the LightningDataModule does."""
    found = [f"{p.relative_to(PACKAGE.parent)} imports {sorted(top_modules(p) & set(LIGHTNING))}"
             for folder in ("nets", "data") for p in sorted((PACKAGE / folder).rglob("*.py"))
             if top_modules(p) & set(LIGHTNING) and p != PACKAGE / "data" / "datamodule.py"]
    assert not found, "\n".join(found)
