"""The multi-seed runner: `adapt run EXPERIMENT --seeds ...` and its mean ± std."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, adapt_main

from adapt.report import aggregate_seeds, mean_std, plus_minus


def _metrics(miou, acc, ece, x, y):
    return {"miou": miou, "pixel_accuracy": acc, "ece": ece, "per_class_iou": {"x": x, "y": y}}


def test_aggregate_equals_a_hand_computation():
    summaries = {0: {"a": _metrics(10.0, 50.0, 5.0, 1.0, None), "b": _metrics(1.0, 2.0, 3.0, 4.0, 5.0)},
                 3: {"a": _metrics(14.0, 54.0, 4.0, 2.0, None)},
                 7: {"a": _metrics(15.0, 59.0, 6.0, 6.0, 8.0)}}
    out = aggregate_seeds(summaries)
    miou = np.array([10.0, 14.0, 15.0])
    assert out["a"]["miou"]["mean"] == pytest.approx(miou.mean())
    assert out["a"]["miou"]["std"] == pytest.approx(miou.std(ddof=1))  # the sample std: n - 1
    assert out["a"]["miou"]["values"] == {0: 10.0, 3: 14.0, 7: 15.0} and out["a"]["miou"]["n"] == 3
    assert out["a"]["pixel_accuracy"]["std"] == pytest.approx(np.std([50.0, 54.0, 59.0], ddof=1))
    assert out["a"]["iou/x"]["mean"] == pytest.approx(3.0)
    assert out["a"]["iou/y"] == {"mean": 8.0, "std": None, "n": 1, "values": {0: None, 3: None, 7: 8.0}}
    assert out["b"]["miou"] == {"mean": 1.0, "std": None, "n": 1, "values": {0: 1.0}}  # a stage of one seed only
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}
    assert plus_minus(out["a"]["miou"]) == f"13.00 ± {miou.std(ddof=1):.2f}" and plus_minus(out["b"]["miou"]) == "1.00"


@pytest.mark.slow
def test_run_seeds_trains_each_seed_and_reports_mean_and_std(tmp_path, tiny_pair, capsys):
    recipe = yaml.safe_load((REPO / "recipes/demo/source_only.yaml").read_text())
    recipe["trainer"].update(max_steps=2, max_epochs=None, limit_val_batches=0)
    recipe["data"] = {"class_path": "adapt.data.DomainDataModule",
                      "init_args": {"source_root": str(tiny_pair / "source"), "target_root": str(tiny_pair / "target"),
                                    "source_split": "train", "val_split": "val", "batch_size": 2}}
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(recipe))
    experiment = {"output": str(tmp_path / "out"), "stages": [
        {"name": "f", "fit": str(tmp_path / "f.yaml")},
        {"name": "target", "evaluate": {"checkpoint": "${f}", "root": str(tiny_pair / "target"), "split": "val"}},
        {"name": "adabn", "tta": {"checkpoint": "${f}", "root": str(tiny_pair / "target"), "split": "train",
                                  "method": "adabn", "batch_size": 6}},
        {"name": "target_adabn", "evaluate": {"checkpoint": "${adabn}", "root": str(tiny_pair / "target"),
                                              "split": "val"}},
        {"name": "fda", "fda": {"source": str(tiny_pair / "source"), "target": str(tiny_pair / "target"),
                                "beta": 0.05, "count": 3, "size": [32, 32]}},
        {"name": "target_fda", "evaluate": {"checkpoint": "${f}", "translator": "${fda}",
                                            "root": str(tiny_pair / "target"), "split": "val"}}]}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(experiment))
    code, stdout, err = adapt_main(capsys, "run", str(tmp_path / "e.yaml"), "--seeds", "4", "5")
    assert code == 0, err[-3000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [4, 5]
    per_seed = [json.loads((out / f"seed_{s}" / "summary.json").read_text())["target"]["miou"] for s in (4, 5)]
    stat = summary["stages"]["target"]["miou"]
    assert stat["values"] == {"4": per_seed[0], "5": per_seed[1]}
    assert stat["mean"] == pytest.approx(np.mean(per_seed)) and stat["std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert per_seed[0] != per_seed[1]  # the seed reached the fit: different initial weights
    for seed in (4, 5):
        config = next((out / f"seed_{seed}" / "f").rglob("config.yaml"))
        assert yaml.safe_load(config.read_text())["seed_everything"] == seed
    assert "target" in stdout and "±" in stdout
    # the tta stage's checkpoint fed the last evaluation; every stage recorded its wall time
    assert set(summary["stages"]) == {"target", "target_adabn", "target_fda"}
    for seed in (4, 5):  # the fda stage drew its references with the run's seed and fed F(T(x_t))
        fda = out / f"seed_{seed}" / "fda" / "fda.ckpt"
        assert torch.load(fda, weights_only=True)["record"]["seed"] == seed
        assert json.loads((out / f"seed_{seed}" / "summary.json").read_text())["target_fda"]["translator"] == str(fda)
    adabn = json.loads((out / "seed_4" / "adabn" / "stage.json").read_text())
    assert adabn["checkpoint"].endswith("adabn/adapted.ckpt") and adabn["seconds"] > 0
    assert json.loads((out / "seed_4" / "target_adabn" / "stage.json").read_text())["metrics"]["checkpoint"] == \
        adabn["checkpoint"]
    code, _, err = adapt_main(capsys, "run", str(tmp_path / "e.yaml"), "--seeds", "1", "1")
    assert code == 2 and "--seeds: [1, 1]; give distinct non-negative integers" in err
