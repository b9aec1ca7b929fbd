"""Target hygiene of the CamVid benchmark: no stage trains on a dusk evaluation frame; test-time rows say so."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

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


def _trained_dusk_frames(config: dict) -> set[str]:
    """The dusk frames a fit with this resolved config reads for training (images of the domains its task reads;
    labelled ones too)."""
    from adapt.data import DomainDataModule

    module, _, name = config["model"]["class_path"].rpartition(".")
    domains = getattr(getattr(importlib.import_module(module), name), "train_domains", ("source", "target"))
    data = config["data"]
    assert data["class_path"] == "adapt.data.DomainDataModule"
    datamodule = DomainDataModule(**data["init_args"])
    datamodule.setup("fit")
    read = set()
    parts = [part for part, _ in getattr(datamodule.source, "parts", [(datamodule.source, None)])]
    if "source" in domains:
        for part in parts:
            read |= _dusk_names(part)
    if "target" in domains:
        read |= _dusk_names(datamodule.target)
    return read


def test_no_stage_trains_on_an_evaluation_frame(capsys, monkeypatch):
    from adapt.data.datasets import open_dataset

    monkeypatch.chdir(REPO)
    evaluation = set(open_dataset("folder", str(DUSK), "eval", labels=True).names)
    assert len(evaluation) == 31
    trained_on_dusk = {}
    for stage in _stages():
        if "fit" in stage:
            args = [_placeholders(a) for a in stage.get("args", [])]
            code, out, err = adapt_main(capsys, "fit", "--config", stage["fit"], *args, "--print_config")
            assert code == 0, err[-2000:]
            trained_on_dusk[stage["name"]] = _trained_dusk_frames(yaml.safe_load(out))
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
    # the check saw the stages that do read dusk images: unlabelled (CycleGAN, FDA, self-training), labelled
    reading = {name for name, frames in trained_on_dusk.items() if frames}
    assert {"translator", "fda", "randomized_adabn", "source_only_adabn", "self_training", "daformer", "mic",
            "few_shot", "oracle"} <= reading
    assert not {"source_only", "randomized"} & reading  # they read day frames only


def test_test_time_rows_are_marked_transductive():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        camvid_table = importlib.import_module("camvid_table")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    on_evaluation_frames = {s["name"] for s in _stages() if "tta" in s and s["tta"].get("split") == "eval"}
    assert on_evaluation_frames == {"adabn", "tent", "mic_adabn", "mic_tent"}
    for label, (evaluation, costs) in camvid_table.ROWS.items():
        assert ("transductive" in label) == bool(set(costs) & on_evaluation_frames), label
    stages = {s["name"] for s in _stages()}
    for evaluation, costs in camvid_table.ROWS.values():  # every row is a stage of the benchmark
        assert evaluation in stages and set(costs) <= stages
