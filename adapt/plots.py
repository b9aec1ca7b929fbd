"""PNG reports: of an evaluation (per-class IoU, confusion matrix, reliability diagram, example predictions), of
``adapt data gap`` (class shares, colour, amplitude spectra: ``plot_gap_*``) and of a fit's predicted class shares.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global state, no display) and
written atomically (``adapt.files.atomic_write``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from PIL import Image

from adapt.data.cityscapes import class_palette
from adapt.data.labels import IGNORE_INDEX
from adapt.files import atomic_write

DPI = 110


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (``adapt.files.atomic_write``)."""
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight"))


def plot_per_class_iou(metrics: dict, path: str | Path, palette: np.ndarray | None = None, title: str = "") -> Path:
    """Horizontal bars of per-class IoU (%), best at the top, undefined classes last ('n/a'); a mIoU line."""
    names = list(metrics["per_class_iou"])
    colours = {n: (palette[i] / 255 if palette is not None else (0.3, 0.45, 0.7)) for i, n in enumerate(names)}
    defined = sorted((n for n in names if metrics["per_class_iou"][n] is not None),
                     key=lambda n: metrics["per_class_iou"][n], reverse=True)
    order = defined + [n for n in names if metrics["per_class_iou"][n] is None]
    fig = Figure(figsize=(7, 1.2 + 0.32 * len(order)))
    ax = fig.add_subplot()
    ys = np.arange(len(order))[::-1]
    values = [metrics["per_class_iou"][n] or 0.0 for n in order]
    ax.barh(ys, values, color=[colours[n] for n in order], edgecolor="black", linewidth=0.5, height=0.7)
    for y, name in zip(ys, order):
        value = metrics["per_class_iou"][name]
        ax.text((value or 0.0) + 1, y, "n/a" if value is None else f"{value:.1f}", va="center", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
    ax.set_yticks(ys, order, fontsize=9)
    ax.set_xlim(0, 108)
    ax.set_xlabel("IoU (%)")
    if metrics.get("miou") is not None:
        ax.axvline(metrics["miou"], color="crimson", linestyle="--", linewidth=1.2, label=f"mIoU {metrics['miou']:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "per-class IoU", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def plot_confusion_matrix(cm: list | np.ndarray, names: list[str], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: label, columns: prediction); rows without pixels in grey."""
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    norm = np.ma.masked_invalid(np.divide(cm, rows, out=np.full_like(cm, np.nan), where=rows > 0))
    side = max(4.5, 0.42 * len(names) + 2.5)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    image.cmap.set_bad("lightgrey")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("label")
    if len(names) <= 25:
        for (i, j), value in np.ndenumerate(norm.filled(np.nan)):
            if not np.isnan(value) and value >= 0.005:
                ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=6.5,
                        color="white" if value > 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the label's pixels")
    ax.set_title(title or "confusion matrix (row-normalised, %)", fontsize=10)
    return save_figure(fig, path)


def plot_reliability(calibration: dict, ece: float | None, path: str | Path, title: str = "") -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal (gap to the bin's mean confidence
    hatched), pixel counts per bin below (log scale)."""
    edges = np.asarray(calibration["edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    count = np.asarray(calibration["count"], dtype=np.float64)
    filled = count > 0
    acc = np.array([a if a is not None else 0.0 for a in calibration["accuracy"]])
    conf = np.array([c if c is not None else 0.0 for c in calibration["confidence"]])
    fig = Figure(figsize=(5.5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08})
    top.bar(centers[filled], acc[filled], width=width[filled], color="steelblue", edgecolor="black",
            linewidth=0.5, label="accuracy")
    gap_low = np.minimum(acc, conf)[filled]
    top.bar(centers[filled], np.abs(acc - conf)[filled], bottom=gap_low, width=width[filled], color="none",
            edgecolor="crimson", hatch="///", linewidth=0.5, label="gap to confidence")
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    ece_text = "n/a" if ece is None else f"{ece:.2f}%"
    top.set_title(title or f"reliability (ECE {ece_text}, {len(count)} bins)", fontsize=10)
    bottom.bar(centers, np.where(filled, count, np.nan), width=width, color="grey", edgecolor="black",
               linewidth=0.5)
    if filled.any():
        bottom.set_yscale("log")
    bottom.set_xlabel("confidence (max softmax probability)")
    bottom.set_ylabel("pixels")
    return save_figure(fig, path)


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """uint8 [H, W] train indices -> uint8 [H, W, 3] colours; ignore (or unknown) pixels black."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = palette
    table[IGNORE_INDEX] = 0
    return table[label]


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The label's colours blended over ``image`` (uint8 [H, W, 3]); ignore pixels pure black."""
    blended = ((1 - alpha) * image + alpha * colorize(label, palette)).round().astype(np.uint8)
    blended[label == IGNORE_INDEX] = 0
    return blended


def example_row(example: dict, palette: np.ndarray) -> np.ndarray:
    """One example as kept by SegmentationTask -> uint8 [H, 3W, 3]: ``x_t | prediction | ground truth`` (labels as
    overlays on ``x_t``), for a logger's picture."""
    x_t = example["x_t"]
    return np.concatenate([x_t, overlay(x_t, example["pred_t"], palette), overlay(x_t, example["y_t"], palette)], 1)


def log_picture(loggers: list, tag: str, image: np.ndarray, step: int) -> None:
    """Add uint8 [H, W, 3] ``image`` to every logger that takes pictures (TensorBoard's ``add_image``)."""
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image(tag, image, global_step=step, dataformats="HWC")


def plot_examples(examples: list[dict], palette: np.ndarray, names: list[str], path: str | Path,
                  title: str = "") -> Path:
    """A grid: one row per example, columns ``x_t | T(x_t) (when translated) | prediction | ground truth``, the
    labels as colour overlays on ``x_t``, a class legend below. ``examples`` as kept by SegmentationTask."""
    translated = any(e.get("x_ts") is not None for e in examples)
    columns = ["x_t"] + (["T(x_t)"] if translated else []) + ["prediction", "ground truth"]
    height, width = examples[0]["x_t"].shape[:2]
    legend_rows = -(-(len(names) + 1) // 6)
    # exact geometry (inches) so the cells keep the images' aspect with no slack: gaps, title, legend
    cell_w, gap_w, gap_h = 3.0, 0.06, 0.3
    cell_h = cell_w * height / width
    top, bottom = 0.35 + (0.35 if title else 0.0), 0.4 + 0.22 * legend_rows
    fig_w = cell_w * len(columns) + gap_w * (len(columns) - 1)
    fig_h = top + cell_h * len(examples) + gap_h * (len(examples) - 1) + bottom
    fig = Figure(figsize=(fig_w, fig_h))
    axes = fig.subplots(len(examples), len(columns), squeeze=False)
    fig.subplots_adjust(left=0, right=1, top=1 - top / fig_h, bottom=bottom / fig_h, wspace=gap_w / cell_w,
                        hspace=gap_h / cell_h)
    for row, example in enumerate(examples):
        valid = example["y_t"] != IGNORE_INDEX
        accuracy = (example["pred_t"] == example["y_t"])[valid].mean() if valid.any() else float("nan")
        cells = [example["x_t"]] + ([example["x_ts"] if example.get("x_ts") is not None
                                     else np.zeros_like(example["x_t"])] if translated else [])
        cells += [overlay(example["x_t"], example["pred_t"], palette), overlay(example["x_t"], example["y_t"], palette)]
        for col, (ax, cell) in enumerate(zip(axes[row], cells)):
            ax.imshow(cell, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=10)
        axes[row][len(columns) - 2].set_xlabel(f"pixel acc. {100 * accuracy:.1f}%", fontsize=8, labelpad=2)
    handles = [Patch(facecolor=palette[i] / 255, edgecolor="black", label=n) for i, n in enumerate(names)]
    handles.append(Patch(facecolor="black", label="ignore"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.08 / fig_h, va="top")
    return save_figure(fig, path)


def write_plots(out: str | Path, metrics: dict, class_names: list[str], palette: np.ndarray,
                examples: list[dict] | None = None, title: str = "") -> list[Path]:
    """All the evaluation PNGs into ``out``: per_class_iou, confusion_matrix, reliability, examples (if any)."""
    out = Path(out)
    paths = [plot_per_class_iou(metrics, out / "per_class_iou.png", palette, f"per-class IoU: {title}"),
             plot_confusion_matrix(metrics["confusion_matrix"], class_names, out / "confusion_matrix.png",
                                   f"confusion matrix (row-normalised, %): {title}")]
    if metrics.get("calibration"):
        ece = metrics.get("ece")
        paths.append(plot_reliability(metrics["calibration"], ece, out / "reliability.png",
                                      f"reliability: {title} (ECE {'n/a' if ece is None else f'{ece:.2f}%'})"))
    if examples:
        paths.append(plot_examples(examples, palette, class_names, out / "examples.png", title))
    return paths


def plot_gap_labels(report: dict, path: str | Path) -> Path:
    """Bars of each domain's class pixel shares (%) from a ``adapt data gap`` report (``report["labels"]``)."""
    labels, names = report["labels"], report["labels"]["classes"]
    fig = Figure(figsize=(max(6.0, 0.55 * len(names) + 2), 4))
    ax = fig.add_subplot()
    x = np.arange(len(names))
    for offset, name, colour in ((-0.2, "source", "tab:blue"), (0.2, "target", "tab:orange")):
        if labels[name]:
            ax.bar(x + offset, [100 * labels[name][c] for c in names], width=0.4, color=colour,
                   label=f"{name} ({report[name]['name']})")
        else:
            ax.text(0.99, 0.95 if name == "source" else 0.88, f"{name}: no labels", transform=ax.transAxes,
                    ha="right", color=colour)
    ax.set_xticks(x, names, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_ylabel("share of labelled pixels (%)")
    tv = labels["total_variation"]
    ax.set_title("class pixel shares" + (f" (total variation {tv:.3f})" if tv is not None else ""), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_gap_colour(report: dict, path: str | Path) -> Path:
    """Each domain's brightness histogram, and its RGB, luma and saturation means with their std over pixels
    (``report["colour"]`` of ``adapt data gap``)."""
    fig = Figure(figsize=(11, 4))
    hist, means = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = ["R", "G", "B", "luma", "saturation"]
    for offset, name, colour in ((-0.2, "source", "tab:blue"), (0.2, "target", "tab:orange")):
        stats = report["colour"][name]
        share = np.array(stats["brightness_histogram"])
        edges = np.linspace(0, 1, len(share) + 1)
        hist.stairs(100 * share, edges, color=colour, label=f"{name} ({report[name]['name']})", linewidth=1.5)
        values = [*stats["rgb_mean"], stats["brightness_mean"], stats["saturation_mean"]]
        spread = [*stats["rgb_std"], stats["brightness_std"], stats["saturation_std"]]
        means.bar(np.arange(5) + offset, values, yerr=spread, width=0.4, color=colour, capsize=3, label=name)
    hist.set(xlabel="brightness (luma, 0..1)", ylabel="share of pixels (%)", title="brightness histograms")
    hist.legend(fontsize=8)
    means.set(xticks=np.arange(5), xticklabels=names, ylim=(0, 1), title="means (error bars: std over pixels)")
    means.legend(fontsize=8)
    return save_figure(fig, path)


def plot_gap_spectrum(amplitudes: list[np.ndarray], report: dict, path: str | Path) -> Path:
    """log(mean target amplitude) - log(mean source amplitude), averaged over channels, frequency 0 centred, with
    the low-frequency square of each beta of ``report["spectrum"]``; ``amplitudes``: the mean amplitude spectra
    of source and target, float [3, H, W] each, unshifted (``adapt.domain_stats.SpectrumStats.mean``)."""
    difference = np.log(amplitudes[1] + 1e-8).mean(0) - np.log(amplitudes[0] + 1e-8).mean(0)
    difference = np.fft.fftshift(difference)
    height, width = difference.shape
    limit = float(np.abs(difference).max()) or 1.0
    fig = Figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot()
    x0, y0 = width // 2, height // 2  # fftshift puts frequency 0 at these indices
    image = ax.imshow(difference, cmap="RdBu_r", vmin=-limit, vmax=limit,
                      extent=(-x0 - 0.5, width - x0 - 0.5, height - y0 - 0.5, -y0 - 0.5))
    for band, colour in zip(report["spectrum"]["bands"], ("black", "dimgrey")):
        if (b := band["half_side"]) > 0:
            ax.add_patch(Rectangle((-b - 0.5, -b - 0.5), 2 * b + 1, 2 * b + 1, fill=False, edgecolor=colour,
                                   linewidth=1.2, label=f"FDA beta {band['beta']} (|f| <= {b})"))
    ax.set(xlabel="horizontal frequency", ylabel="vertical frequency")
    ax.set_title(f"log amplitude, target - source (mean over images, {height}x{width})", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="log(target / source)")
    return save_figure(fig, path)


def plot_class_shares(shares: dict, path: str | Path, palette: np.ndarray | None = None, loggers: list = (),
                      step: int = 0) -> Path:
    """The predicted class shares on the target per validation round (``class_shares`` of selection.json,
    ``adapt.report.class_shares_report``), one line per class in its colour (``palette`` uint8 [C, 3] in class
    order; default ``class_palette``), symlog scale (linear below 0.1 %); a collapsed class drawn thick, crossed at
    its round, its warning line (``collapse_fraction`` of its first share) dashed. Also added to ``loggers`` that
    take pictures (``log_picture``, tag ``val/class_shares``, at ``step``)."""
    rounds, fell, fraction = shares["rounds"], shares["collapsed"], shares["collapse_fraction"]
    names, x = list(rounds[0]["target"]), [r["round"] for r in rounds]
    palette = class_palette(names) if palette is None else palette
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for i, name in enumerate(names):
        colour, entry = palette[i] / 255, fell.get(name)
        ax.plot(x, [r["target"].get(name, 0.0) for r in rounds], marker="o", markersize=3, color=colour,
                linewidth=2.5 if entry else 1.0, markeredgecolor="black", markeredgewidth=0.3,
                label=name + (f" (collapsed at round {entry['round']})" if entry else ""))
        if entry:
            ax.plot([entry["round"]], [entry["share"]], marker="X", markersize=11, color=colour, clip_on=False,
                    markeredgecolor="black", markeredgewidth=1.0, zorder=5)
            ax.axhline(fraction * entry["first_share"], color=colour, linestyle="--", linewidth=1)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(bottom=0)
    ax.set_xticks(x, [f"{r['round']}\n{r['step']}" for r in rounds], fontsize=8)
    ax.set(xlabel="validation round / step", ylabel="predicted pixels on the target (%)")
    ax.set_title(f"predicted class shares on the target per round ({len(fell)} collapsed below "
                 f"{100 * fraction:g} % of their first share)", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(alpha=0.3)
    path = save_figure(fig, path)
    log_picture(loggers, "val/class_shares", np.asarray(Image.open(path).convert("RGB")), step)
    return path
