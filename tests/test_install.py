"""`pip install .` (not editable) into a fresh virtual environment, then, from an empty folder, the installed
`adapt recipes`, `adapt demo` and `adapt fit --config demo/source_only`: the recipes ship inside the wheel."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

CHECKOUT = Path(__file__).resolve().parents[1]
TINY = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--data.init_args.num_images=16",
        "--trainer.enable_progress_bar=false"]


def test_the_wheel_lists_every_package_and_recipe_folder():
    """pyproject.toml names adapt's subpackages and the recipe folders one by one (recipes/ is mapped to
    adapt/recipes): a new one missing from that list would be left out of the wheel."""
    listed = set(tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(CHECKOUT).parts) for p in (CHECKOUT / "adapt").rglob("__init__.py")}
    recipe_folders = {".".join(("adapt", *p.relative_to(CHECKOUT).parts)) for p in (CHECKOUT / "recipes").iterdir()
                      if p.is_dir() and any(p.glob("*.yaml"))}
    assert listed == packages | recipe_folders | {"adapt.recipes"}


def run(command: list, cwd: Path, timeout: int = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # no way to the checkout
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_an_installed_adapt_runs_from_an_empty_folder(tmp_path):
    # the checkout's files a wheel is built from, copied: pip builds in the source folder (build/, *.egg-info),
    # which must not touch the checkout
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CHECKOUT / name, source / name)
    for name in ("adapt", "recipes"):
        shutil.copytree(CHECKOUT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    # without pip: Python 3.11's ensurepip would also install an old setuptools, which would then build the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    # torch, Lightning, setuptools, pip ...: this interpreter's packages, read after the new environment's own (its
    # site-packages comes first, so its adapt wins; the checkout's editable-install hook is not run from here)
    site = Path(run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    tmp_path).strip())
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
         source], tmp_path)
    shutil.rmtree(source)

    empty = tmp_path / "empty"
    empty.mkdir()
    where = run([venv / "bin" / "python", "-c", "import adapt, adapt.catalogue as c; print(adapt.__file__); "
                 "print(c.recipes_root())"], empty).split()
    assert all(Path(w).is_relative_to(venv) for w in where), where  # the installed package and its recipes
    assert Path(where[1]) == Path(where[0]).parent / "recipes"

    listing = run([venv / "bin" / "adapt", "recipes"], empty)
    assert re.search(r"^demo/source_only +Demo, source only", listing, re.M) and "camvid/benchmark" in listing

    run([venv / "bin" / "adapt", "fit", "--config", "demo/source_only", "--trainer.max_epochs=1", *TINY], empty)
    assert list((empty / "runs" / "demo" / "source_only").rglob("last.ckpt"))

    out = run([venv / "bin" / "adapt", "demo", "--max_epochs", "1", "--output", "d", *TINY], empty)
    assert "== demo: mIoU %" in out and (empty / "d" / "summary.json").is_file()
    assert sorted(p.name for p in (empty / "d").iterdir() if p.is_dir()) == [
        "data", "randomized", "randomized.source_val", "randomized.target_val", "source_only",
        "source_only.source_val", "source_only.target_val"]
