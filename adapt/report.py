"""Reports: JSON files (written atomically), the tables printed for a person, mean ± std over seeds, and the
checkpoint-selection report with the predicted class shares per round (and the classes that collapsed). The PNG
reports are in ``adapt.plots``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from adapt.files import atomic_write
from adapt.metrics import VALIDATORS


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON (indented, newline-terminated) atomically (``adapt.files.atomic_write``)."""
    text = (json.dumps(data, indent=2) + "\n").encode()
    return atomic_write(path, lambda f: f.write(text))


def _fmt(value: float | None) -> str:
    return "   -" if value is None else f"{value:6.2f}"


def per_class_table(metrics: dict, title: str = "") -> str:
    """A per-class IoU table (percent; '-' for a class absent from labels and predictions), with the mean of each
    class subset in ``metrics["class_subsets"]`` under the mIoU line."""
    names = list(metrics["per_class_iou"])
    subsets = [(f"mIoU {len(note['classes'])} ({subset})", metrics[note["metric"]])
               for subset, note in metrics.get("class_subsets", {}).items()]  # e.g. "mIoU 16 (synthia16)"
    width = max(len(n) for n in names + ["pixel accuracy"] + [label for label, _ in subsets])
    lines = [title] if title else []
    lines.append(f"{'class':<{width}}  IoU %")
    lines.append("-" * (width + 8))
    lines += [f"{name:<{width}}  {_fmt(metrics['per_class_iou'][name])}" for name in names]
    lines.append("-" * (width + 8))
    lines.append(f"{'mIoU':<{width}}  {_fmt(metrics['miou'])}")
    lines += [f"{label:<{width}}  {_fmt(value)}" for label, value in subsets]
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


def selection_report(rounds: list[dict], label_metric: str = "val/miou") -> dict:
    """Which validation round each label-free validator would choose, and its ``label_metric``.

    ``rounds``: one dict per validation round with ``epoch``, ``step``, ``label_metric`` and the validators' logged
    values (``adapt.metrics.VALIDATORS``). Returns ``{"rounds": n, "label_choice": {"epoch", "step", "miou"},
    "last": {...}, "by": {validator: {"epoch", "step", "miou", "value", "below_label_choice"}}}``;
    ``below_label_choice`` is the label-chosen mIoU minus the validator-chosen one (0: the validator found the best
    round; the label choice is an oracle, not a method).
    """
    rounds = [r for r in rounds if r.get(label_metric) is not None and not math.isnan(r[label_metric])]
    if not rounds:
        raise ValueError(f"no validation round logged {label_metric}")

    def pick(row: dict, value: str | None = None) -> dict:
        out = {"epoch": int(row["epoch"]), "step": int(row["step"]), "miou": float(row[label_metric])}
        return out if value is None else dict(out, value=float(row[value]))

    best = max(rounds, key=lambda r: r[label_metric])
    report = {"rounds": len(rounds), "label_choice": pick(best), "last": pick(rounds[-1]), "by": {}}
    for name, (key, mode) in VALIDATORS.items():
        scored = [r for r in rounds if r.get(key) is not None and not math.isnan(r[key])]
        if scored:
            sign = 1 if mode == "max" else -1
            entry = pick(max(scored, key=lambda r: sign * r[key]), key)
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
    if shares := report.get("class_shares"):
        fraction, fell = shares["collapse_fraction"], shares["collapsed"]
        if not fraction:
            state = "collapse warning off"
        elif fell:
            state = f"fell below {_pct(100 * fraction)} % of their first-round share: " + ", ".join(
                f"{name} (round {entry['round']})" for name, entry in fell.items())
        else:
            state = f"no class fell below {_pct(100 * fraction)} % of its first-round share"
        lines.append(f"predicted class shares on the target: {state}")
    return "\n".join(lines)


def validation_round(logged: dict, epoch: int, step: int, source_counts: list[int] | None = None) -> dict:
    """One validation round as ``selection_report`` and ``class_collapses`` read it, from the values logged at its
    end (name -> number or 0-dim tensor): ``epoch``, ``step``, ``val/miou`` and the validators' values (those
    logged), ``share`` (class -> percent of the predicted pixels, from ``val/share/CLASS``) and, given
    ``source_counts`` (labelled source pixels per class, in class order, since the round before), ``source_share``
    (class -> percent of those pixels)."""
    names = ["val/miou", *(key for key, _ in VALIDATORS.values())]
    row = {"epoch": epoch, "step": step, **{name: float(logged[name]) for name in names if name in logged}}
    share = {key[len("val/share/"):]: float(v) for key, v in logged.items() if key.startswith("val/share/")}
    if share:
        row["share"] = share
    if share and source_counts is not None:
        total = max(sum(source_counts), 1)
        row["source_share"] = {name: 100 * count / total for name, count in zip(share, source_counts)}
    return row


def _pct(value: float) -> str:
    return f"{value:.3g}"


def watched_classes(rounds: list[dict], fraction: float = 0.1) -> list[str]:
    """The classes ``class_collapses`` watches: those F predicts at the first round with shares (``rounds`` as
    there) on more than 0 % of the target pixels and, where the source labels were counted before that round, on at
    least ``fraction`` of their share of the source labels: a class an F barely trained predicts on a few pixels
    has not been learnt yet, and its share going to 0 is noise, not a collapse."""
    first = next((r for r in rounds if r.get("share")), None)
    if first is None or fraction <= 0:
        return []
    source = first.get("source_share") or {}
    return [name for name, share in first["share"].items() if share > 0 and share >= fraction * source.get(name, 0)]


def class_collapses(rounds: list[dict], fraction: float = 0.1) -> dict[str, dict]:
    """The watched classes (``watched_classes``) whose predicted share on the target fell below ``fraction`` of
    their share at the first round, each at the first round it did (one entry per class and run: later rounds under
    the line say nothing new, and a class that comes back and falls again is the same story).

    ``rounds``: the validation rounds in order, each with ``epoch``, ``step`` and ``share`` (class name -> percent
    of F's predicted pixels on the target; rounds without it are skipped), optionally ``source_share`` (class name
    -> percent of the labelled source pixels of the training batches since the round before). ``fraction`` 0 finds
    none. Returns name -> {``round`` (1-based, among all rounds), ``epoch``, ``step``, ``share``, ``first_round``,
    ``first_share``, ``source_share`` (the source labels' share over the same steps; None when not counted)}.
    """
    indexed = [(i, r) for i, r in enumerate(rounds, 1) if r.get("share")]
    watched = watched_classes(rounds, fraction)
    if not watched or len(indexed) < 2:
        return {}
    first_round, first = indexed[0][0], indexed[0][1]["share"]
    found: dict[str, dict] = {}
    for i, row in indexed[1:]:
        for name, share in row["share"].items():
            start = first.get(name) or 0.0
            if name not in found and name in watched and share < fraction * start:
                found[name] = {"round": i, "epoch": int(row["epoch"]), "step": int(row["step"]), "share": share,
                               "first_round": first_round, "first_share": start,
                               "source_share": (row.get("source_share") or {}).get(name)}
    return found


def collapse_line(name: str, entry: dict, fraction: float) -> str:
    """One warning line for an entry of ``class_collapses``: the class, the round and the drop."""
    share, first = entry["share"], entry["first_share"]
    line = (f"class {name!r}: predicted share on the target fell to {_pct(share)} % at validation round "
            f"{entry['round']} (epoch {entry['epoch']}, step {entry['step']}), {_pct(100 * share / first)} % of its "
            f"{_pct(first)} % at round {entry['first_round']}")
    if entry.get("source_share") is not None:
        line += f"; in the source labels of the same steps it holds {_pct(entry['source_share'])} %"
    return line + f" (warned below {_pct(100 * fraction)} % of the first share; shares per round: selection.json)"


def class_shares_report(rounds: list[dict], fraction: float = 0.1) -> dict:
    """The ``class_shares`` part of selection.json: ``collapse_fraction``, ``rounds`` (``round``, ``epoch``,
    ``step``, ``target``: class -> predicted share %, ``source``: class -> label share % of the training batches
    since the round before, when counted), ``watched`` (``watched_classes``) and ``collapsed``
    (``class_collapses``)."""
    rows = [dict({"round": i, "epoch": int(r["epoch"]), "step": int(r["step"]), "target": r["share"]},
                 **({"source": r["source_share"]} if r.get("source_share") else {}))
            for i, r in enumerate(rounds, 1) if r.get("share")]
    return {"collapse_fraction": fraction, "rounds": rows, "watched": watched_classes(rounds, fraction),
            "collapsed": class_collapses(rounds, fraction)}
