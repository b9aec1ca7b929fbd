"""Reports: metrics.json (written atomically) and the tables printed for a person."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically: a temporary file in the same folder, then a rename (no half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a report is for everyone who can read the folder
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fmt(value: float | None) -> str:
    return "   -" if value is None else f"{value:6.2f}"


def per_class_table(metrics: dict, title: str = "") -> str:
    """A per-class IoU table (percent; '-' for a class absent from labels and predictions)."""
    names = list(metrics["per_class_iou"])
    width = max(len(n) for n in names + ["pixel accuracy"])
    lines = [title] if title else []
    lines.append(f"{'class':<{width}}  IoU %")
    lines.append("-" * (width + 8))
    lines += [f"{name:<{width}}  {_fmt(metrics['per_class_iou'][name])}" for name in names]
    lines.append("-" * (width + 8))
    lines.append(f"{'mIoU':<{width}}  {_fmt(metrics['miou'])}")
    lines.append(f"{'pixel accuracy':<{width}}  {_fmt(metrics['pixel_accuracy'])}")
    if "ece" in metrics:
        lines.append(f"{'ECE':<{width}}  {_fmt(metrics['ece'])}")
    return "\n".join(lines)


def worst_classes(metrics: dict, count: int = 3) -> list[tuple[str, float]]:
    """The ``count`` classes of lowest IoU among those defined, lowest first: [(name, IoU %), ...]."""
    defined = [(name, v) for name, v in metrics["per_class_iou"].items() if v is not None]
    return sorted(defined, key=lambda item: item[1])[:count]


def worst_classes_line(metrics: dict, count: int = 3) -> str:
    """``worst classes: a 1.23, b 4.56, c 7.89`` (IoU %)."""
    worst = worst_classes(metrics, count)
    return "worst classes: " + (", ".join(f"{name} {value:.2f}" for name, value in worst) if worst else "none defined")


def comparison_table(rows: dict[str, dict[str, float | None]], first: str = "run") -> str:
    """rows: row name -> {column name -> value}; one line per row; ``first`` heads the row-name column."""
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    width = max(len(r) for r in list(rows) + [first])
    widths = [max(len(c), 6) for c in columns]
    lines = ["  ".join([f"{first:<{width}}"] + [f"{c:>{w}}" for c, w in zip(columns, widths)])]
    for name, row in rows.items():
        cells = [f"{_fmt(row.get(c)).strip():>{w}}" for c, w in zip(columns, widths)]
        lines.append("  ".join([f"{name:<{width}}"] + cells))
    return "\n".join(lines)


def mean_std(values: list[float | None]) -> dict:
    """``{"mean", "std", "n"}`` of the defined values: the mean and the sample standard deviation (n - 1 in the
    denominator; None with fewer than 2 values); ``{"mean": None, ...}`` when none is defined."""
    defined = [float(v) for v in values if v is not None]
    n = len(defined)
    mean = sum(defined) / n if n else None
    std = (sum((v - mean) ** 2 for v in defined) / (n - 1)) ** 0.5 if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def aggregate_seeds(summaries: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """Per-seed experiment summaries (seed -> stage -> metrics.json content) -> stage -> metric -> ``{"mean",
    "std", "n", "values": {seed: value}}`` for ``miou``, ``pixel_accuracy``, ``ece`` and every ``iou/CLASS``."""
    out: dict[str, dict] = {}
    stages = dict.fromkeys(stage for summary in summaries.values() for stage in summary)
    for stage in stages:
        runs = {seed: summary[stage] for seed, summary in summaries.items() if stage in summary}
        names = dict.fromkeys(n for metrics in runs.values() for n in metrics.get("per_class_iou", {}))
        keys = {"miou": lambda m: m.get("miou"), "pixel_accuracy": lambda m: m.get("pixel_accuracy"),
                "ece": lambda m: m.get("ece")}
        keys.update({f"iou/{n}": (lambda m, n=n: m.get("per_class_iou", {}).get(n)) for n in names})
        out[stage] = {}
        for key, get in keys.items():
            values = {seed: get(metrics) for seed, metrics in runs.items()}
            out[stage][key] = dict(mean_std(list(values.values())), values=values)
    return out


def plus_minus(stat: dict) -> str:
    """``12.34 ± 0.56`` (``12.34`` for one value, ``-`` for none)."""
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.2f}" + (f" ± {stat['std']:.2f}" if stat["std"] is not None else "")
