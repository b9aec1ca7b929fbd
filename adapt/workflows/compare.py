"""``adapt compare A B``: how sure is a difference in mIoU? Two methods scored on the same frames by ``adapt evaluate``
(one metrics.json per seed), compared with percentile bootstrap intervals over frames and seeds
(``adapt.intervals``): each method's mIoU with its interval, and the paired difference A - B with its interval and
the number of seeds in which A beats B. Values in percent, like metrics.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from adapt.errors import ConfigError, DataError
from adapt.intervals import miou_from_counts, miou_interval, paired_difference, stack_runs
from adapt.report import write_json


def load_metrics(paths: str | Path | list) -> list[dict]:
    """The metrics.json of each path (a file, or a folder holding metrics.json), each with ``per_image`` counts.
    DataError naming the first file missing, unreadable or without per-image counts."""
    runs = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path) / "metrics.json" if Path(path).is_dir() else Path(path)
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable metrics.json ({type(err).__name__}); give the metrics.json "
                            "that adapt evaluate wrote") from None
        if not isinstance(metrics, dict) or "per_image" not in metrics:
            raise DataError(f"{path}: no per-image counts (per_image); re-run adapt evaluate on the checkpoint to "
                            "write them")
        runs.append(dict(metrics, path=str(path)))
    if not runs:
        raise ConfigError("adapt compare: no metrics.json given; give one file, or a list of one per seed")
    return runs


def _pct(value: float) -> float:
    return round(100 * value, 6)


def miou_summary(runs: list[dict], resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """One method's runs (metrics dicts with ``per_image``, one per seed, same frames) -> ``{"miou", "low",
    "high"}`` (mean over seeds and its bootstrap interval, percent), ``per_seed`` (percent), ``seeds``, ``images``,
    ``runs`` (their paths, where known)."""
    names, intersection, union = stack_runs([r["per_image"] for r in runs])
    miou, low, high = miou_interval(intersection, union, resamples, seed, level)
    return {"miou": _pct(miou), "low": _pct(low), "high": _pct(high),
            "per_seed": [_pct(miou_from_counts(i, u)) for i, u in zip(intersection, union)],
            "seeds": len(runs), "images": len(names), "runs": [r.get("path") for r in runs]}


def _stacked(runs: list[dict], names: list[str] | None, label: str) -> tuple:
    """``stack_runs`` of the runs' per-image counts; its ConfigError re-raised with ``label`` (which names the
    files) in front."""
    try:
        return stack_runs([r["per_image"] for r in runs], names)
    except ConfigError as err:
        raise ConfigError(f"{label}: {err}") from None


def _paths(runs: list[dict]) -> str:
    return ", ".join(str(r.get("path", f"run {i + 1}")) for i, r in enumerate(runs))


def compare_runs(a: list[dict], b: list[dict], resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Methods A and B (metrics dicts with ``per_image``, one per seed, seeds paired by position) on the same
    frames: ``{"a": miou_summary(a), "b": miou_summary(b), "difference": {"mean", "low", "high" (percent),
    "a_better_seeds", "seeds"}, "images", "resamples", "level", "seed"}``. ConfigError when the frames differ (or
    one is scored twice), naming the files of A or B (their ``path``), or when the seed counts differ."""
    if not 0 < level < 1 or resamples < 1:
        raise ConfigError(f"adapt compare: level {level}, resamples {resamples}; give 0 < level < 1 and "
                          "resamples >= 1")
    names, a_intersection, a_union = _stacked(a, None, f"A ({_paths(a)})")
    _, b_intersection, b_union = _stacked(b, names, f"B ({_paths(b)}) against A")  # B in A's frame order
    diff = paired_difference(a_intersection, a_union, b_intersection, b_union, resamples, seed, level)
    difference = {"mean": _pct(diff["difference"]), "low": _pct(diff["low"]), "high": _pct(diff["high"]),
                  "a_better_seeds": diff["a_better_seeds"], "seeds": diff["seeds"]}
    return {"a": miou_summary(a, resamples, seed, level), "b": miou_summary(b, resamples, seed, level),
            "difference": difference, "images": len(names), "resamples": resamples, "level": level, "seed": seed}


def format_comparison(result: dict) -> str:
    """``compare_runs``' result as a few printable lines."""
    level, diff = round(100 * result["level"], 2), result["difference"]
    lines = [f"{key.upper()}: {', '.join(str(p) for p in result[key]['runs'])}" for key in ("a", "b")]
    lines.append(f"mIoU (%), {level:g} % bootstrap intervals over {result['images']} images and {diff['seeds']} "
                 f"seed{'s' * (diff['seeds'] > 1)}, {result['resamples']} resamples:")
    for key in ("a", "b"):
        m = result[key]
        seeds = ", ".join(f"{v:.2f}" for v in m["per_seed"])
        lines.append(f"  {key.upper()}      {m['miou']:6.2f}  [{m['low']:6.2f}, {m['high']:6.2f}]  seeds: {seeds}")
    lines.append(f"  A - B  {diff['mean']:+6.2f}  [{diff['low']:+6.2f}, {diff['high']:+6.2f}]  "
                 f"A > B in {diff['a_better_seeds']} of {diff['seeds']} seeds")
    return "\n".join(lines)


def compare(a: str | list[str], b: str | list[str], output: str | None = None, resamples: int = 2000,
            seed: int = 0, level: float = 0.95) -> dict:
    """Compare two methods scored on the same frames: each mIoU and the paired difference A - B, with bootstrap
    intervals over frames and seeds.

    Args:
        a: method A: a metrics.json written by ``adapt evaluate`` (or its folder), or a list of them, one per seed:
            ``[s0/metrics.json,s1/metrics.json]``.
        b: method B, likewise, with as many seeds as A (paired by position) on the same frames.
        output: a JSON file to write the numbers to.
        resamples: bootstrap resamples.
        seed: seed of the bootstrap's random generator.
        level: the intervals' coverage (0.95: from the 2.5th to the 97.5th percentile).
    """
    result = compare_runs(load_metrics(a), load_metrics(b), resamples, seed, level)
    if output is not None:
        write_json(output, result)
    return result
