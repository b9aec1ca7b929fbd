"""What a fit logs: CSV and TensorBoard by default (curves and pictures in one run folder), selection.json from
the logged values under any logger, and no misleading ``weights_only`` line when checkpoints are saved. (The
translator's pictures in TensorBoard: tests/test_ddp.py, from process 0 of a two-process run.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_adapt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_cli import tiny_recipe


def events(log_dir: Path) -> EventAccumulator:
    files = list(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file in {log_dir}"
    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_a_fit_logs_csv_and_tensorboard_in_one_run_folder(fit_run):
    log_dir = next(fit_run.rglob("metrics.csv")).parent
    tags = events(log_dir).Tags()
    assert {"val/miou", "train/loss", "val/entropy"} <= set(tags["scalars"])
    assert "val/example_0" in tags["images"]  # x_t | prediction | label, one picture per validation round
    assert (log_dir / "selection.json").is_file() and (log_dir / "checkpoints" / "last.ckpt").is_file()
    assert "weights_only` was not set" not in (fit_run / "stdout.txt").read_text()


def test_selection_json_without_the_csv_logger(tiny_pair, tmp_path):
    root = tmp_path / "run"
    fit = run_adapt("fit", "--config", str(tiny_recipe(tmp_path, tiny_pair)), f"--trainer.default_root_dir={root}",
                    "--trainer.max_steps=4", "--trainer.limit_train_batches=2", "--trainer.max_epochs=2",
                    "--trainer.logger=pytorch_lightning.loggers.TensorBoardLogger",
                    f"--trainer.logger.save_dir={root}")
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert not list(root.rglob("metrics.csv"))
    selection = next(root.rglob("selection.json"))
    report = json.loads(selection.read_text())
    assert report["rounds"] == 2
    scalars = events(selection.parent).Scalars("val/miou")
    assert report["label_choice"]["miou"] == pytest.approx(max(s.value for s in scalars), abs=1e-4)
    assert "weights_only` was not set" not in fit.stdout + fit.stderr
