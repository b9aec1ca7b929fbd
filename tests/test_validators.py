"""Unsupervised validators: hand computations, the DDP-summable metric, and checkpoint choice in a real run."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from adapt.metrics import Validators, information_maximization, mean_entropy, soft_neighborhood_density
from adapt.report import selection_report

# three pixels, two classes, as a [1, 2, 1, 3] probability map
PIXELS = [[1.0, 0.0], [0.5, 0.5], [0.8, 0.2]]


def _map(pixels) -> torch.Tensor:
    return torch.tensor(pixels, dtype=torch.float64).T.reshape(1, len(pixels[0]), 1, len(pixels))


def _h(p) -> float:
    return -sum(q * math.log(q) for q in p if q > 0)


def test_entropy_and_information_maximization_by_hand():
    probs = _map(PIXELS)
    mean_h = (0 + math.log(2) + _h([0.8, 0.2])) / 3
    marginal = [(1.0 + 0.5 + 0.8) / 3, (0.0 + 0.5 + 0.2) / 3]
    assert mean_entropy(probs) == pytest.approx(mean_h, abs=1e-12)
    assert information_maximization(probs) == pytest.approx(mean_h - _h(marginal), abs=1e-12)
    # all pixels sure of one class: no entropy, no diversity; sure but split over classes: negative IM
    assert information_maximization(_map([[1.0, 0.0], [1.0, 0.0]])) == pytest.approx(0, abs=1e-9)
    assert information_maximization(_map([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(-math.log(2), abs=1e-9)


def test_soft_neighborhood_density_by_hand():
    tau = 0.5
    unit = [[q / math.hypot(*p) for q in p] for p in PIXELS]
    expected = 0.0
    for i, u in enumerate(unit):
        sims = [sum(a * b for a, b in zip(u, v)) / tau for j, v in enumerate(unit) if j != i]
        exps = [math.exp(s) for s in sims]
        expected += _h([e / sum(exps) for e in exps]) / len(unit)
    assert soft_neighborhood_density(_map(PIXELS), temperature=tau) == pytest.approx(expected, abs=1e-12)


def test_validators_metric_equals_the_functions_over_a_whole_set():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 4, 5, 6, generator=g).mul(3).softmax(1) for _ in range(3)]
    metric = Validators(num_classes=4, pixels_per_image=30)  # every pixel of each 5x6 image
    for probs in batches:
        metric.update(probs)
    scores = metric.compute()
    everything = torch.cat([p.movedim(1, -1).reshape(-1, 4) for p in batches])
    assert scores["entropy"] == pytest.approx(mean_entropy(everything), abs=1e-6)
    assert scores["im"] == pytest.approx(information_maximization(everything), abs=1e-6)
    assert scores["snd"] == pytest.approx(soft_neighborhood_density(everything), abs=1e-5)
    metric.reset()
    metric.update(batches[0])
    assert metric.compute()["entropy"] == pytest.approx(mean_entropy(batches[0]), abs=1e-6)


def test_selection_report_picks_each_validators_round():
    rows = [  # epoch, step, miou, entropy, im, snd
        (0, 9, 20.0, 0.9, -0.1, 3.0), (1, 19, 30.0, 0.5, -0.4, 3.5), (2, 29, 28.0, 0.4, -0.3, 3.2)]
    rounds = [{"epoch": e, "step": s, "val/miou": m, "val/entropy": h, "val/im": im, "val/snd": snd}
              for e, s, m, h, im, snd in rows]
    report = selection_report(rounds)
    assert report["rounds"] == 3 and report["label_choice"] == {"epoch": 1, "step": 19, "miou": 30.0}
    assert report["last"]["miou"] == 28.0
    assert report["by"]["entropy"]["epoch"] == 2 and report["by"]["entropy"]["below_label_choice"] == 2.0
    assert report["by"]["im"]["epoch"] == 1 and report["by"]["im"]["below_label_choice"] == 0.0
    assert report["by"]["snd"]["epoch"] == 1 and report["by"]["snd"]["value"] == 3.5


def test_a_run_logs_validators_and_can_keep_the_checkpoint_a_validator_chooses(fit_run):
    log_dir = next(fit_run.rglob("metrics.csv")).parent  # the shared fit: 3 rounds, best-entropy.ckpt kept
    selection = json.loads((log_dir / "selection.json").read_text())
    assert selection["rounds"] == 3 and set(selection["by"]) == {"entropy", "im", "snd"}
    assert "by target labels (oracle)" in (fit_run / "stdout.txt").read_text()
    with (log_dir / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/entropy")]
    entropies = [float(r["val/entropy"]) for r in rows]
    best = torch.load(next(fit_run.rglob("best-entropy.ckpt")), map_location="cpu", weights_only=False)
    assert best["epoch"] == selection["by"]["entropy"]["epoch"]  # the round the validator chose
    assert min(entropies) == pytest.approx(selection["by"]["entropy"]["value"])
    # selection.json is built from the logged values themselves: the CSV logger's rows say the same
    label = max(rows, key=lambda r: float(r["val/miou"]))
    assert selection["label_choice"]["miou"] == pytest.approx(float(label["val/miou"]))
    assert list(fit_run.rglob("last.ckpt"))
