"""Unsupervised validators: scores of a segmenter's target predictions that need no target labels.

They let a run choose a checkpoint without target labels (``--checkpoint.monitor=val/entropy``). All take softmax
probabilities ``p`` float [N, C] (pixels as rows) or [B, C, H, W]; natural logarithms (nats).

- ``mean_entropy``: mean over pixels of H(p) = -sum_c p_c log p_c; lower is better (confident predictions).
- ``information_maximization``: mean entropy minus the entropy of the mean prediction (the diversity term);
  lower is better: confident per pixel, yet not all pixels in one class.
- ``soft_neighborhood_density`` (SND, Saito et al., ICCV 2021): pixels' probability vectors, L2-normalised; each
  pixel's similarities to the others (itself excluded), divided by ``temperature`` and turned into a
  distribution by softmax; SND is the mean entropy of those distributions; higher is better (dense neighbourhoods).

``selection_report`` compares, over the validation rounds of a run's ``metrics.csv``, the checkpoint each validator
would choose with the one the target labels would choose (the oracle choice, which no method may use).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch.nn import functional as nnf
from torchmetrics import Metric

EPS = 1e-12
# validator -> (logged name, "min" or "max": which value is better)
VALIDATORS = {"entropy": ("val/entropy", "min"), "im": ("val/im", "min"), "snd": ("val/snd", "max")}


def _rows(probs: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] or [N, C] -> float [N, C]."""
    return probs.movedim(1, -1).reshape(-1, probs.shape[1]) if probs.dim() == 4 else probs


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """float [N, C] -> float [N], nats."""
    return -(probs * probs.clamp_min(EPS).log()).sum(-1)


def mean_entropy(probs: torch.Tensor) -> float:
    return entropy(_rows(probs).double()).mean().item()


def information_maximization(probs: torch.Tensor) -> float:
    rows = _rows(probs).double()
    return entropy(rows).mean().item() - entropy(rows.mean(0, keepdim=True)).item()


def soft_neighborhood_density(probs: torch.Tensor, temperature: float = 0.05) -> float:
    rows = nnf.normalize(_rows(probs).double(), dim=-1)
    similarity = rows @ rows.T / temperature
    similarity.fill_diagonal_(-math.inf)
    return entropy(similarity.softmax(-1)).mean().item()


class Validators(Metric):
    """The three validators over a whole validation set, DDP-synced.

    Entropy and information maximization are exact over every pixel (sums of entropy and of probabilities, summed
    over processes). SND compares pixels pairwise, so it uses ``pixels_per_image`` pixels of each image, drawn by
    a generator seeded by the image's position in its process's stream (the same pixels every round).
    """

    full_state_update = False

    def __init__(self, num_classes: int, pixels_per_image: int = 64, temperature: float = 0.05,
                 max_samples: int = 4096) -> None:
        super().__init__()
        self.pixels_per_image, self.temperature, self.max_samples = pixels_per_image, temperature, max_samples
        self.add_state("entropy_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("prob_sum", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pixels", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("samples", [], dist_reduce_fx="cat")
        self.images = 0

    def update(self, probs: torch.Tensor) -> None:
        """probs: float [B, C, H, W], softmax over C."""
        rows = _rows(probs.detach()).float()
        self.entropy_sum += entropy(rows).sum(dtype=torch.float64)
        self.prob_sum += rows.sum(0, dtype=torch.float64)
        self.pixels += rows.shape[0]
        per_image = probs.shape[-2] * probs.shape[-1]
        for i in range(probs.shape[0]):
            g = torch.Generator().manual_seed(self.images)
            self.images += 1
            picks = torch.randperm(per_image, generator=g)[: self.pixels_per_image].to(rows.device)
            self.samples.append(rows[i * per_image + picks])

    def compute(self) -> dict[str, float]:
        pixels = self.pixels.clamp_min(1)
        mean_h = (self.entropy_sum / pixels).item()
        marginal = (self.prob_sum / pixels)[None]
        samples = self.samples if isinstance(self.samples, torch.Tensor) else (
            torch.cat(self.samples) if self.samples else torch.zeros(0, len(self.prob_sum)))
        if len(samples) > self.max_samples:
            samples = samples[torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))[
                : self.max_samples].to(samples.device)]
        snd = soft_neighborhood_density(samples, self.temperature) if len(samples) > 1 else math.nan
        return {"entropy": mean_h, "im": mean_h - entropy(marginal).item(), "snd": snd}

    def reset(self) -> None:
        super().reset()
        self.images = 0


def selection_report(metrics_csv: str | Path, label_metric: str = "val/miou") -> dict:
    """Which validation round each validator would choose in a Lightning ``metrics.csv``, and its ``label_metric``.

    Returns ``{"rounds": n, "label_choice": {"epoch", "step", "miou"}, "last": {...}, "by": {validator: {"epoch",
    "step", "miou", "value", "below_label_choice"}}}``; ``below_label_choice`` is the label-chosen mIoU minus the
    validator-chosen one (0 = the validator found the best round; the label choice is an oracle, not a method).
    """
    with open(metrics_csv, newline="") as f:
        rounds = [row for row in csv.DictReader(f) if row.get(label_metric)]
    if not rounds:
        raise ValueError(f"{metrics_csv}: no validation round logged {label_metric}")

    def pick(row: dict, value: str | None = None) -> dict:
        out = {"epoch": int(row["epoch"]), "step": int(row["step"]), "miou": float(row[label_metric])}
        return out if value is None else dict(out, value=float(row[value]))

    best = max(rounds, key=lambda r: float(r[label_metric]))
    report = {"rounds": len(rounds), "label_choice": pick(best), "last": pick(rounds[-1]), "by": {}}
    for name, (key, mode) in VALIDATORS.items():
        scored = [r for r in rounds if r.get(key) and not math.isnan(float(r[key]))]
        if scored:
            sign = 1 if mode == "max" else -1
            chosen = max(scored, key=lambda r: sign * float(r[key]))
            entry = pick(chosen, key)
            entry["below_label_choice"] = report["label_choice"]["miou"] - entry["miou"]
            report["by"][name] = entry
    return report


def selection_lines(report: dict) -> str:
    """``selection_report`` as a few printable lines."""
    label, last = report["label_choice"], report["last"]
    lines = [f"checkpoint choice over {report['rounds']} validation rounds (target mIoU at the chosen round):",
             f"  by target labels (oracle)  epoch {label['epoch']:>3}  {label['miou']:6.2f}",
             f"  last                       epoch {last['epoch']:>3}  {last['miou']:6.2f}"]
    for name, entry in report["by"].items():
        lines.append(f"  by {name:<23} epoch {entry['epoch']:>3}  {entry['miou']:6.2f}  "
                     f"({entry['below_label_choice']:.2f} below the label choice)")
    return "\n".join(lines)


def write_selection(log_dir: Path) -> dict | None:
    """With two or more validation rounds in ``log_dir/metrics.csv``: ``selection.json`` (which round each
    unsupervised validator would choose, against the target-label choice), also printed."""
    from adapt.report import write_json

    metrics = log_dir / "metrics.csv"
    if not metrics.is_file():
        return None
    try:
        report = selection_report(metrics)
    except ValueError:  # no validation round with target labels
        return None
    if report["rounds"] < 2 or not report["by"]:
        return None
    write_json(log_dir / "selection.json", report)
    print(selection_lines(report))
    return report
