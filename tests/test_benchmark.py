"""Target hygiene of the CamVid benchmark: no fit reads a dusk evaluation (test) frame, for training or for
validation; no other stage adapts on one unless its row says "transductive"."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO, adapt_main

from adapt.recipe import load_yaml

DUSK = (REPO / "../shared/data/camvid/dusk").resolve()
pytestmark = pytest.mark.skipif(not DUSK.is_dir(), reason="CamVid is not beside the repository (../shared/data)")


def _stages() -> list[dict]:
    return load_yaml(REPO / "recipes/camvid/benchmark.yaml")["stages"]


def _placeholders(value):
    """``${stage}`` references filled with a dummy path (nothing here loads a checkpoint)."""
    return re.sub(r"\$\{[^}]+\}", "unused.ckpt", value)


def _dusk_names(dataset) -> set[str]:
    return set(dataset.names) if Path(dataset.root).resolve() == DUSK else set()


def _fit_dusk_frames(config: dict) -> tuple[set[str], set[str]]:
    """The dusk frames a fit with this resolved config reads: (for training: images of the domains its task reads,
    labelled ones too; for validation: its validation split, whether or not its trainer validates)."""
    from adapt.data import DomainDataModule

    module, _, name = config["model"]["class_path"].rpartition(".")
    domains = getattr(getattr(importlib.import_module(module), name), "train_domains", ("source", "target"))
    data = config["data"]
    assert data["class_path"] == "adapt.data.DomainDataModule"
    datamodule = DomainDataModule(**data["init_args"])
    datamodule.trainer = SimpleNamespace(limit_val_batches=config["trainer"].get("limit_val_batches"))
    datamodule.setup("fit")
    read = set()
    parts = [part for part, _ in getattr(datamodule.source, "parts", [(datamodule.source, None)])]
    if "source" in domains:
        for part in parts:
            read |= _dusk_names(part)
    if "target" in domains:
        read |= _dusk_names(datamodule.target)
    return read, _dusk_names(datamodule.val)


def test_no_stage_reads_an_evaluation_frame_but_final_evaluations(capsys, monkeypatch):
    from adapt.data.datasets import open_dataset

    monkeypatch.chdir(REPO)
    evaluation = set(open_dataset("folder", str(DUSK), "eval", labels=True).names)
    assert len(evaluation) == 31
    trained_on_dusk, validated_on = {}, {}
    for stage in _stages():
        if "fit" in stage:
            args = [_placeholders(a) for a in stage.get("args", [])]
            code, out, err = adapt_main(capsys, "fit", "--config", stage["fit"], *args, "--print_config")
            assert code == 0, err[-2000:]
            trained_on_dusk[stage["name"]], validated_on[stage["name"]] = _fit_dusk_frames(yaml.safe_load(out))
        elif "tta" in stage and stage["tta"].get("split") != "eval":  # (on eval frames: transductive rows)
            spec = stage["tta"]
            trained_on_dusk[stage["name"]] = _dusk_names(open_dataset(
                spec.get("kind", "folder"), spec["root"], spec.get("split"), labels=False))
        elif "fda" in stage:
            spec = stage["fda"]
            trained_on_dusk[stage["name"]] = _dusk_names(open_dataset(
                spec.get("target_kind", "folder"), spec["target"], spec.get("target_split"), labels=False))
    for name, frames in trained_on_dusk.items():
        assert not frames & evaluation, f"stage {name} trains on evaluation frames {sorted(frames & evaluation)[:3]}"
    development = set(open_dataset("folder", str(DUSK), "labelled_train", labels=True).names)
    for name, frames in validated_on.items():  # oracle, few-shot, joint reference: the split of a validation never run
        assert frames == development, f"stage {name} validates on {sorted(frames - development)[:3]}"
    # the check saw the stages that do read dusk images: unlabelled (CycleGAN, FDA, self-training), labelled
    reading = {name for name, frames in trained_on_dusk.items() if frames}
    assert {"translator", "fda", "randomized_adabn", "source_only_adabn", "self_training", "daformer", "mic",
            "advent", "feature_alignment", "few_shot", "oracle", "joint_reference"} <= reading
    assert not {"source_only", "randomized"} & reading  # they read day frames only


DEVELOPMENT_RECIPES = ["test_time_dev.yaml", "self_training_length_dev.yaml", "self_training_dev.yaml", "mixing_dev.yaml",
                       "adversarial_dev.yaml"]


def test_development_experiments_never_read_an_evaluation_frame(capsys, monkeypatch):
    """The experiments that chose the benchmark's settings: every evaluate and tta stage reads the development
    frames (labelled_train), every fit trains and validates on frames outside dusk/splits/eval.txt."""
    from adapt.data.datasets import open_dataset

    monkeypatch.chdir(REPO)
    evaluation = set(open_dataset("folder", str(DUSK), "eval", labels=True).names)
    fits: dict[tuple, tuple[set[str], set[str]]] = {}  # (recipe, args) -> frames read; a fit repeated is resolved once
    for recipe in DEVELOPMENT_RECIPES:
        for stage in load_yaml(REPO / "recipes/camvid" / recipe)["stages"]:
            where = f"{recipe} stage {stage['name']}"
            if "fit" in stage:
                args = tuple(_placeholders(a) for a in stage.get("args", []))
                if (stage["fit"], args) not in fits:
                    code, out, err = adapt_main(capsys, "fit", "--config", stage["fit"], *args, "--print_config")
                    assert code == 0, f"{where}: {err[-2000:]}"
                    fits[stage["fit"], args] = _fit_dusk_frames(yaml.safe_load(out))
                trained, validated = fits[stage["fit"], args]
                for doing, frames in (("trains", trained), ("validates", validated)):
                    assert not frames & evaluation, f"{where} {doing} on eval frames {sorted(frames & evaluation)[:3]}"
            else:
                verb = "evaluate" if "evaluate" in stage else "tta"
                assert verb in stage, f"{where}: a stage this test does not know; say which frames it reads"
                spec = stage[verb]
                assert spec.get("split") == "labelled_train", f"{where} reads split {spec.get('split')!r}"
                read = _dusk_names(open_dataset(spec.get("kind", "folder"), spec["root"], spec["split"], labels=False))
                assert read and not read & evaluation, f"{where} reads evaluation frames"


def _camvid_table():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module("camvid_table")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_test_time_rows_are_marked_transductive():
    camvid_table = _camvid_table()
    on_evaluation_frames = {s["name"] for s in _stages() if "tta" in s and s["tta"].get("split") == "eval"}
    assert on_evaluation_frames == {"adabn", "tent", "mic_adabn", "mic_tent"}
    for label, (evaluation, costs) in camvid_table.ROWS.items():
        assert ("transductive" in label) == bool(set(costs) & on_evaluation_frames), label
    stages = {s["name"] for s in _stages()}
    for evaluation, costs in camvid_table.ROWS.values():  # every row is a stage of the benchmark
        assert evaluation in stages and set(costs) <= stages
    for label in [*camvid_table.ROWS, *(c[0] for c in camvid_table.COMPARISONS)]:  # the tables' first column
        assert len(label) <= 50, label


def test_the_table_gives_intervals_both_gaps_and_paired_comparisons(tmp_path):
    """Stage records written by hand: every frame of a stage has the same counts (IoU k/10 for both classes), so
    each figure is known: mIoU 10 k, an interval of zero width, gaps and differences by arithmetic."""
    import json

    camvid_table, seeds = _camvid_table(), [3, 4, 5]
    k = {"eval_source_only": 2, "eval_oracle": 6, "eval_joint_reference": 8, "eval_mic": 5, "eval_tent": 4}
    for seed in seeds:
        for label, (evaluation, costs) in camvid_table.ROWS.items():
            hits = k.get(evaluation, 3)
            per_image = {"names": [f"f{i}" for i in range(4)], "intersection": [[hits, hits]] * 4,
                         "union": [[10, 10]] * 4, "pixels": [20] * 4, "correct": [2 * hits] * 4}
            metrics = {"miou": 10.0 * hits, "per_image": per_image}
            for name, record in [(evaluation, {"metrics": metrics}),
                                 *((c, {"checkpoint": "x", "seconds": 60.0}) for c in costs)]:
                (tmp_path / f"seed_{seed}" / name).mkdir(parents=True, exist_ok=True)
                (tmp_path / f"seed_{seed}" / name / "stage.json").write_text(json.dumps(record))
            (tmp_path / f"seed_{seed}" / evaluation / "metrics.json").write_text(json.dumps(metrics))
    lines = camvid_table.table(tmp_path, seeds).splitlines()
    mic = next(line for line in lines if "masked image consistency" in line)
    # mean 50.00 ± 0, interval [50, 50], gap closed: (50 - 20) / (60 - 20) = 75 %, (50 - 20) / (80 - 20) = 50 %
    assert "50.00 ±  0.00" in mic and "[50.00, 50.00]" in mic and "75.0%" in mic and "50.0%" in mic, mic
    assert mic.rstrip().endswith("50.00 50.00 50.00")
    comparisons = camvid_table.comparisons(tmp_path, seeds)
    mic_tent = next(line for line in comparisons.splitlines() if line.startswith("MIC - TENT"))
    assert "+10.00" in mic_tent and "[+10.00, +10.00]" in mic_tent and "3 of 3" in mic_tent, mic_tent
    start = next(line for line in comparisons.splitlines() if line.startswith("DACS-style - its start"))
    assert "+0.00" in start and "0 of 3" in start and "interval holds 0" in start, start
