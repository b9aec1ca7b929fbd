"""The class-collapse warning: each class's predicted share on the target per validation round (F's argmax, every
pixel, summed over processes), the one-line warning when a class falls below a fraction of its first-round share,
the shares in selection.json and class_shares.png, on a run made to collapse a class and on the same run without."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import pytest
import torch
import yaml

from adapt.selection import CheckpointSelection
from adapt.errors import ConfigError
from adapt.metrics import Validators
from adapt.plots import plot_class_shares
from adapt.report import class_collapses, class_shares_report, collapse_line, validation_round, watched_classes

NAMES = ["road", "car", "sky"]


def _probs(pred: list[list[int]], num_classes: int = 3) -> torch.Tensor:
    """A [1, C, H, W] probability map whose argmax is ``pred`` [H, W] (0.6 on the predicted class)."""
    labels = torch.tensor(pred)
    probs = torch.full((num_classes, *labels.shape), 0.4 / (num_classes - 1))
    return probs.scatter_(0, labels[None], 0.6)[None]


def test_predicted_shares_by_hand_every_pixel_counts():
    batches = [_probs([[0, 0, 1], [2, 2, 2]]), _probs([[0, 0, 0], [0, 2, 2]])]  # no labels: nothing is ignored
    metric = Validators(num_classes=3, pixels_per_image=6)
    for probs in batches:
        metric.update(probs)
    counts = [2 + 4, 1 + 0, 3 + 2]  # road, car, sky over the 12 pixels
    assert metric.compute()["share"].tolist() == pytest.approx([100 * c / 12 for c in counts], abs=1e-9)
    metric.reset()
    metric.update(_probs([[1, 1], [1, 1]]))
    assert metric.compute()["share"].tolist() == [0.0, 100.0, 0.0]  # a class no pixel predicts: 0, not missing


def test_predicted_shares_sum_over_processes():
    """Two processes' states merged by the metric's own reduction (what DDP's sync does): the counts add up."""
    first, second = Validators(num_classes=3), Validators(num_classes=3)
    first.update(_probs([[0, 0, 1]]))
    second.update(_probs([[2, 2, 2], [2, 1, 0]]))
    first.merge_state(second)
    assert first.predicted.tolist() == [2 + 1, 1 + 1, 0 + 4]
    assert first.compute()["share"].tolist() == pytest.approx([100 * 3 / 9, 100 * 2 / 9, 100 * 4 / 9])


def test_a_round_reads_the_logged_shares_and_the_source_counts():
    logged = {"val/miou": torch.tensor(40.0), "val/entropy": torch.tensor(0.5), "val/share/road": torch.tensor(70.0),
              "val/share/car": torch.tensor(20.0), "val/share/sky": torch.tensor(10.0), "train/loss": 1.0}
    row = validation_round(logged, 1, 20, [30, 10, 60])
    assert row == {"epoch": 1, "step": 20, "val/miou": 40.0, "val/entropy": 0.5,
                   "share": {"road": 70.0, "car": 20.0, "sky": 10.0},
                   "source_share": {"road": 30.0, "car": 10.0, "sky": 60.0}}
    assert "source_share" not in validation_round(logged, 1, 20)


def _round(epoch: int, step: int, road: float, car: float, sky: float, source: tuple | None = None) -> dict:
    row = {"epoch": epoch, "step": step, "val/miou": 30.0, "share": {"road": road, "car": car, "sky": sky}}
    return row if source is None else dict(row, source_share=dict(zip(NAMES, source)))


def test_collapse_is_found_once_at_the_round_it_falls():
    rounds = [_round(0, 30, 60.0, 6.6, 33.4, (40, 7.0, 53)), _round(1, 60, 62.0, 3.0, 35.0),
              _round(2, 90, 63.0, 0.4, 36.6, (41, 7.1, 51.9)), _round(3, 120, 64.0, 0.1, 35.9)]
    found = class_collapses(rounds, 0.1)
    assert list(found) == ["car"]  # 0.4 < 0.66; later rounds under the line are the same collapse
    car = found["car"]
    assert (car["round"], car["epoch"], car["step"], car["first_round"]) == (3, 2, 90, 1)
    assert car["share"] == 0.4 and car["first_share"] == 6.6 and car["source_share"] == 7.1
    line = collapse_line("car", car, 0.1)
    assert "\n" not in line
    for part in ("class 'car'", "fell to 0.4 %", "round 3 (epoch 2, step 90)", "6.06 % of its 6.6 % at round 1",
                 "source labels of the same steps it holds 7.1 %", "below 10 % of the first share"):
        assert part in line, (part, line)
    assert class_collapses(rounds[:2], 0.1) == {}  # 3.0 is still above 0.66


def test_silent_when_shares_hold_for_absent_classes_and_when_off():
    holding = [_round(0, 10, 60.0, 6.0, 34.0), _round(1, 20, 58.0, 0.7, 41.3), _round(2, 30, 66.0, 3.0, 31.0)]
    assert class_collapses(holding, 0.1) == {}  # 0.7 of 6.0 is above a tenth
    absent = [_round(0, 10, 70.0, 0.0, 30.0), _round(1, 20, 60.0, 5.0, 35.0), _round(2, 30, 70.0, 0.0, 30.0)]
    assert class_collapses(absent, 0.1) == {} and "car" not in watched_classes(absent, 0.1)
    falling = [_round(0, 10, 60.0, 6.0, 34.0), _round(1, 20, 66.0, 0.0, 34.0)]
    assert list(class_collapses(falling, 0.1)) == ["car"] and class_collapses(falling, 0.0) == {}
    # a class an F barely trained predicts on under a tenth of its source share is not watched: not learnt yet
    unlearnt = [_round(0, 2, 67.0, 0.13, 32.87, (60, 6.2, 33.8)), _round(1, 4, 70.0, 0.0, 30.0)]
    assert watched_classes(unlearnt, 0.1) == ["road", "sky"] and class_collapses(unlearnt, 0.1) == {}


def _trainer(rounds_seen: int, shares: dict[str, float]) -> SimpleNamespace:
    logged = {"val/miou": torch.tensor(30.0), **{f"val/share/{n}": torch.tensor(v) for n, v in shares.items()}}
    return SimpleNamespace(sanity_checking=False, callback_metrics=logged, current_epoch=rounds_seen,
                           global_step=10 * (rounds_seen + 1), is_global_zero=True,
                           strategy=SimpleNamespace(reduce=lambda tensor, reduce_op: tensor))


def test_the_callback_warns_in_one_line_once_per_class(caplog):
    module = SimpleNamespace(class_names=NAMES)
    callback = CheckpointSelection()
    shares = [(60.0, 8.0, 32.0), (62.0, 0.5, 37.5), (63.0, 0.2, 36.8), (60.0, 0.1, 39.9)]
    with caplog.at_level(logging.WARNING, logger="adapt"):
        for i, values in enumerate(shares):
            mask = torch.tensor([[0, 0, 1, 2], [2, 2, 255, 255]])  # the source keeps car: 1 of 6 labelled pixels
            callback.on_train_batch_end(None, module, None, {"source": {"mask": mask}}, 0)
            callback.on_validation_end(_trainer(i, dict(zip(NAMES, values))), module)
    warnings = [r for r in caplog.records if r.name.startswith("adapt")]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "class 'car'" in message and "round 2 (epoch 1, step 20)" in message and "of its 8 %" in message
    assert "it holds 16.7 %" in message  # the source labels counted over the same steps, ignore left out
    assert callback.rounds[1]["source_share"] == pytest.approx({"road": 100 * 2 / 6, "car": 100 / 6, "sky": 50.0})

    caplog.clear()
    quiet, other_process = CheckpointSelection(collapse_fraction=0.0), CheckpointSelection()
    with caplog.at_level(logging.WARNING, logger="adapt"):
        for i, values in enumerate(shares):
            quiet.on_validation_end(_trainer(i, dict(zip(NAMES, values))), module)
            other_process.on_validation_end(SimpleNamespace(**dict(vars(_trainer(i, dict(zip(NAMES, values)))),
                                                                   is_global_zero=False)), module)
    assert not [r for r in caplog.records if r.name.startswith("adapt")] and len(quiet.rounds) == 4
    assert list(class_collapses(other_process.rounds, 0.1)) == ["car"]  # found there too, said by process 0 only
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError, match="collapse_fraction"):
            CheckpointSelection(collapse_fraction=bad)


def test_the_picture_draws_the_shares_and_goes_to_loggers_that_take_pictures(tmp_path):
    rounds = [_round(0, 30, 60.0, 6.6, 33.4), _round(1, 60, 70.0, 0.0, 30.0), _round(2, 90, 71.0, 0.0, 29.0)]
    pictures = []
    logger = SimpleNamespace(experiment=SimpleNamespace(add_image=lambda tag, image, **kw: pictures.append(
        (tag, image, kw))))
    path = plot_class_shares(class_shares_report(rounds, 0.1), tmp_path / "class_shares.png", loggers=[logger],
                             step=90)
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 300
    ((tag, logged, kw),) = pictures
    assert tag == "val/class_shares" and logged.shape == image.shape and kw["global_step"] == 90


# -- end to end: `adapt fit` fine-tuning a trained F on a source with and without one class ------------------------

COLLAPSED, INTO = "sky", "building"  # the made-to-collapse source labels every sky pixel as building


@pytest.fixture(scope="module")
def trained_f(tiny_pair, tmp_path_factory) -> Path:
    """F trained 100 steps on the tiny pair's source (it predicts sky on the target at the start of the fine-tune)."""
    import pytorch_lightning as pl
    from conftest import tiny_datamodule

    from adapt.tasks import SegmentationTask

    pl.seed_everything(0)
    data = tiny_datamodule(tiny_pair, batch_size=4)
    task = SegmentationTask(arch="fpn", class_names=data.class_names, lr=2e-3)
    trainer = pl.Trainer(max_steps=100, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, data)
    path = tmp_path_factory.mktemp("trained_f") / "f.ckpt"
    trainer.save_checkpoint(path)
    return path


def _fine_tune(capsys, caplog, tmp_path: Path, pair: Path, source: Path, checkpoint: Path) -> tuple[Path, list[str]]:
    """`adapt fit` from ``checkpoint`` on ``source``, 6 epochs of 2 steps at lr 2e-4, validated on the target after
    each: the run folder and the adapt warnings it logged."""
    from conftest import adapt_main
    from test_cli import tiny_recipe

    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="adapt"):
        code, _, err = adapt_main(capsys, "fit", "--config", str(tiny_recipe(tmp_path, pair)),
                                  f"--trainer.default_root_dir={run}", f"--data.init_args.source_root={source}",
                                  "--data.init_args.augment=none", f"--model.init_args.init_from={checkpoint}",
                                  "--model.init_args.lr=2e-4", "--trainer.max_steps=-1", "--trainer.max_epochs=6",
                                  "--trainer.limit_train_batches=2")
    assert code == 0, err[-3000:]
    return next(run.rglob("selection.json")).parent, [r.getMessage() for r in caplog.records
                                                       if r.name.startswith("adapt") and r.levelno >= logging.WARNING]


@pytest.mark.slow
def test_a_source_without_the_class_collapses_it_and_the_run_warns(tiny_pair, trained_f, tmp_path, capsys, caplog):
    names = [c["name"] for c in yaml.safe_load((tiny_pair / "source" / "classes.yaml").read_text())["classes"]]
    source = shutil.copytree(tiny_pair / "source", tmp_path / "relabelled")
    for path in (source / "labels").glob("*.png"):
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        label[label == names.index(COLLAPSED)] = names.index(INTO)
        cv2.imwrite(str(path), label)

    log_dir, warnings = _fine_tune(capsys, caplog, tmp_path, tiny_pair, source, trained_f)
    shares = json.loads((log_dir / "selection.json").read_text())["class_shares"]
    assert len(shares["rounds"]) == 6 and shares["collapse_fraction"] == 0.1
    first = shares["rounds"][0]["target"][COLLAPSED]
    fell = shares["collapsed"][COLLAPSED]
    assert first > 0 and fell["share"] < 0.1 * first and fell["source_share"] == 0.0
    assert shares["rounds"][fell["round"] - 1]["target"][COLLAPSED] == fell["share"]
    assert all(abs(sum(r["target"].values()) - 100) < 1e-3 for r in shares["rounds"])
    lines = [w for w in warnings if f"class {COLLAPSED!r}" in w]
    assert len(lines) == 1 and f"validation round {fell['round']} (epoch {fell['epoch']}" in lines[0], warnings
    assert "in the source labels of the same steps it holds 0 %" in lines[0]
    assert all(r["target"][COLLAPSED] < 0.1 * first for r in shares["rounds"][fell["round"]:])  # and stays down
    assert (log_dir / "class_shares.png").is_file()


@pytest.mark.slow
def test_the_same_fine_tune_on_the_true_source_stays_silent(tiny_pair, trained_f, tmp_path, capsys, caplog):
    log_dir, warnings = _fine_tune(capsys, caplog, tmp_path, tiny_pair, tiny_pair / "source", trained_f)
    shares = json.loads((log_dir / "selection.json").read_text())["class_shares"]
    assert len(shares["rounds"]) == 6 and COLLAPSED in shares["watched"]
    assert shares["collapsed"] == {} and not [w for w in warnings if "predicted share on the target" in w], warnings
    assert (log_dir / "class_shares.png").is_file()


def test_the_shared_fit_records_the_shares_per_round(fit_run):
    """The shared tiny fit (3 rounds): shares per round in selection.json, the picture beside it and in TensorBoard,
    the verdict printed under the checkpoint choice."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = next(fit_run.rglob("selection.json")).parent
    shares = json.loads((log_dir / "selection.json").read_text())["class_shares"]
    assert [r["round"] for r in shares["rounds"]] == [1, 2, 3]
    assert all(abs(sum(r["target"].values()) - 100) < 1e-3 and abs(sum(r["source"].values()) - 100) < 1e-3
               for r in shares["rounds"])
    assert (log_dir / "class_shares.png").is_file()
    assert "predicted class shares on the target:" in (fit_run / "stdout.txt").read_text()
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert "val/class_shares" in events.Tags()["images"]
    assert {f"val/share/{name}" for name in shares["rounds"][0]["target"]} <= set(events.Tags()["scalars"])
