"""What a fit logs: CSV and TensorBoard by default (curves and pictures in one run folder), selection.json from
the logged values under any logger, and no misleading ``weights_only`` line when checkpoints are saved. (The
translator's pictures in TensorBoard: tests/test_ddp.py, from process 0 of a two-process run.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


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
    """TensorBoard alone (no metrics.csv): selection.json is still written, from the values logged each round."""
    import pytorch_lightning as pl
    from conftest import tiny_datamodule
    from pytorch_lightning.loggers import TensorBoardLogger

    from adapt.selection import CheckpointSelection
    from adapt.tasks import SegmentationTask

    data = tiny_datamodule(tiny_pair)
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=2, logger=TensorBoardLogger(tmp_path), callbacks=[
        CheckpointSelection()], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(SegmentationTask(arch="fpn", class_names=data.class_names), data)
    assert not list(tmp_path.rglob("metrics.csv"))
    report = json.loads((Path(trainer.log_dir) / "selection.json").read_text())
    assert report["rounds"] == 2
    scalars = events(Path(trainer.log_dir)).Scalars("val/miou")
    assert report["label_choice"]["miou"] == pytest.approx(max(s.value for s in scalars), abs=1e-4)
