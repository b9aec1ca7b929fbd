"""Shared fixtures: a tiny synthetic domain pair, one finished `adapt fit` run and one F checkpoint, each made once
per test session, and the two ways of running the CLI (a subprocess, or `main` in this process).

Marks: ``slow`` for tests that train several times or start several processes (DDP, interruption and resume,
experiments); ``python -m pytest -m "not slow"`` is the quick suite for working on the code."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory) -> Path:
    """A 24-image-per-domain synthetic pair at 64x64 (root/source, root/target, splits train/val)."""
    from adapt.data import synthetic

    root = tmp_path_factory.mktemp("pair")
    synthetic.write_pair(root, num_images=24, size=(64, 64), seed=3)
    return root


def run_adapt(*args: str, cwd: Path = REPO, timeout: float = 600, helpers: bool = False,
              background: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run the real `adapt` command (same entry point as the console script) in a subprocess; ``helpers``: the
    callbacks of tests/helpers.py importable there; ``background``: return the running Popen instead."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    if helpers:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "adapt.cli", *args]
    if background:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def adapt_main(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI's own `main` in this process (one Lightning import for all calls): exit code, stdout, stderr."""
    from adapt.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def benchmark_module(name: str):
    """A script of ``benchmarks/`` imported as a module (they import their neighbours by plain name)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def tiny_datamodule(pair: Path, batch_size: int = 2):
    """A DomainDataModule on the tiny pair: source/train, unlabelled target/train, target/val."""
    from adapt.data import DomainDataModule

    return DomainDataModule(str(pair / "source"), str(pair / "target"), source_split="train", target_split="train",
                            val_split="val", batch_size=batch_size, val_batch_size=2)


@pytest.fixture(scope="session")
def segmenter_ckpt(tiny_pair, tmp_path_factory) -> Path:
    """A (barely trained) F checkpoint on the tiny pair."""
    return tiny_checkpoint(tiny_pair, tmp_path_factory.mktemp("f") / "f.ckpt", "fpn")


def tiny_checkpoint(pair: Path, path: Path, arch: str) -> Path:
    """An F of ``arch`` trained one step on the tiny pair, saved at ``path``."""
    import pytorch_lightning as pl

    from adapt.tasks import SegmentationTask

    dm = tiny_datamodule(pair)
    task = SegmentationTask(arch=arch, class_names=dm.class_names)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, dm)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def fit_run(tiny_pair, tmp_path_factory) -> Path:
    """One finished run of the real `adapt fit` command on the tiny pair, shared by the tests that read what a fit
    writes: FPN, 3 epochs of 2 steps, validation every epoch, and besides last.ckpt the checkpoint the entropy
    validator chooses (``best-entropy.ckpt``). Returns the run folder (its ``trainer.default_root_dir``).

    Made once for the whole session, also when pytest-xdist runs several workers (the first one to get the lock
    trains; the others wait and reuse its run)."""
    from filelock import FileLock
    from test_cli import tiny_recipe

    base = tmp_path_factory.getbasetemp()
    # under xdist each worker's base is one folder of the session's: their parent is shared; without xdist the
    # parent is /tmp/pytest-of-USER, shared with every other session (and older code), so the base itself
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "fit_run"
    folder.mkdir(exist_ok=True)
    run_dir = folder / "run"
    with FileLock(str(folder / "lock")):
        if not (folder / "done").is_file():
            _train_fit_run(folder, run_dir, tiny_pair, tiny_recipe)
            (folder / "done").write_text("finished\n")
    return run_dir


def _train_fit_run(folder: Path, run_dir: Path, tiny_pair: Path, tiny_recipe) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)  # an earlier, unfinished attempt
    fit = run_adapt("fit", "--config", str(tiny_recipe(folder, tiny_pair)), f"--trainer.default_root_dir={run_dir}",
                    "--model.init_args.arch=fpn", "--trainer.max_steps=-1", "--trainer.max_epochs=3",
                    "--trainer.limit_train_batches=2", "--checkpoint.monitor=val/entropy", "--checkpoint.mode=min",
                    "--checkpoint.save_top_k=1", "--checkpoint.filename=best-entropy")
    assert fit.returncode == 0, fit.stderr[-3000:]
    (run_dir / "stdout.txt").write_text(fit.stdout)
