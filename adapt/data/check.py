"""``adapt data check KIND ROOT [--split S]``: find what would break a run in a dataset tree, before the run does.

Every image and label of the set is decoded (the readers of ``adapt.data.folder``), so a corrupt file is reported,
never raised. Problems, by kind (the keys of ``report["problems"]``):

    missing_image     a name in the split / list file has no image
    missing_label     an image without its label
    orphan_label      a label file without its image
    unreadable_image  an image that cannot be decoded (corrupt, truncated, not an image)
    unreadable_label  a label that cannot be decoded, or is not a single-channel PNG of class ids
    size_mismatch     an image and its label differ in size
    bad_label_values  label values outside the class map: for ``folder`` neither a listed id nor the ignore
                      value; for ``gta5`` / ``cityscapes`` / ``acdc`` / ``darkzurich`` not a Cityscapes label id
                      (0..33) and not 255; for ``synthia`` not a SYNTHIA id (0..22); for ``carla`` /
                      ``carla_legacy`` not a tag of the table (0..28 / 0..22)

Class pixel frequencies are per train class, in percent of labelled pixels (those that map to a class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adapt.data.datasets import DatasetKind, label_format
from adapt.data.folder import read_image
from adapt.errors import DataError

PROBLEMS = {
    "missing_image": "listed but no image",
    "missing_label": "image without a label",
    "orphan_label": "label without an image",
    "unreadable_image": "unreadable or corrupt image",
    "unreadable_label": "unreadable or corrupt label",
    "size_mismatch": "image and label sizes differ",
    "bad_label_values": "label values outside the class map",
}
EXAMPLES = 5


def check_dataset(kind: DatasetKind, root: str, split: str | None = None) -> dict:
    """Check a dataset before a run does: pairs, corrupt files, sizes, label values, class frequencies.

    Every image and label of the set is decoded; problems are reported, never raised. Returns the report:
    ``kind``, ``root``, ``split``, ``counts`` (``samples``, ``images``, ``labels``, ``pairs`` (pairs without any
    problem), ``label_pixels``, ``labelled_pixels``), ``problems`` (problem kind -> files relative to ``root``;
    only kinds that occur), ``details`` (file -> what is wrong) and ``frequencies`` (class name -> percent of
    labelled pixels; None when no pixel is labelled).

    Args:
        kind: dataset layout (see ``adapt.data.datasets.open_dataset`` and datasets/README.md).
        root: dataset folder.
        split: folder: a list in ROOT/splits/; gta5, synthia, carla, carla_legacy: a list file of stems;
            cityscapes: train, val or test; acdc: val, night/val, fog,snow/train, ...; darkzurich: val/night,
            train/night, ...; (cityscapes, acdc, darkzurich: val by default).

    Raises:
        DataError: ``root`` is missing, holds no images, or lacks what the layout needs (classes.yaml, a split).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; check the path")
    layout = label_format(kind, root, split)  # the datasets' own walks of their layouts
    tree, classes, valid, split = layout.tree, layout.classes, layout.valid, layout.split

    problems: dict[str, list[str]] = {key: [] for key in PROBLEMS}
    details: dict[str, str] = {}

    def rel(path: Path) -> str:
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    def add(key: str, name: str, detail: str = "") -> None:
        problems[key].append(name)
        if detail:
            details[name] = detail

    histogram = np.zeros(len(valid), dtype=np.int64)
    pairs = 0
    for name in tree.names:
        if name not in tree.images:
            add("missing_image", name)
            continue
        image_path = tree.images[name]
        try:
            image_size = read_image(image_path).shape[:2]
        except DataError:
            image_size = None
            add("unreadable_image", rel(image_path), "cannot decode")
        if name not in tree.labels:
            add("missing_label", rel(image_path))
            continue
        label_path = tree.labels[name]
        try:
            label = layout.read(label_path)
        except DataError as err:
            add("unreadable_label", rel(label_path), str(err).split(": ", 1)[-1].split(";")[0])
            continue
        counts = np.bincount(label.ravel(), minlength=len(valid))
        histogram += counts
        bad = np.flatnonzero(counts * ~valid)
        if bad.size:
            shown = ", ".join(map(str, bad[:8])) + (", ..." if bad.size > 8 else "")
            add("bad_label_values", rel(label_path), f"values {shown}")
        if image_size is not None and image_size != label.shape:
            add("size_mismatch", rel(label_path), f"label {label.shape[1]}x{label.shape[0]}, "
                                                  f"image {image_size[1]}x{image_size[0]}")
        elif image_size is not None and not bad.size:
            pairs += 1
    for path in tree.orphans:
        add("orphan_label", rel(path))

    class_pixels = np.bincount(layout.lut, weights=histogram, minlength=256)[: classes.num_classes]
    labelled = int(class_pixels.sum())
    frequencies = {n: (round(100 * float(c) / labelled, 4) if labelled else None)
                   for n, c in zip(classes.names, class_pixels)}
    counts = {"samples": len(tree.names), "images": sum(n in tree.images for n in tree.names),
              "labels": sum(n in tree.labels for n in tree.names), "pairs": pairs,
              "label_pixels": int(histogram.sum()), "labelled_pixels": labelled}
    return {"kind": kind, "root": str(root), "split": split, "counts": counts,
            "problems": {k: v for k, v in problems.items() if v}, "details": details, "frequencies": frequencies}


def format_report(report: dict) -> str:
    """The report for a person: counts, each problem kind with its total and up to 5 example files, frequencies."""
    counts, problems = report["counts"], report["problems"]
    split = f" [{report['split']}]" if report["split"] else ""
    lines = [f"{report['kind']} dataset {report['root']}{split}: {counts['samples']} samples, {counts['images']} "
             f"images, {counts['labels']} labels, {counts['pairs']} good pairs"]
    if problems:
        total = sum(len(v) for v in problems.values())
        lines.append(f"PROBLEMS: {total} in {len(problems)} kind{'s' * (len(problems) > 1)}")
        for key, files in problems.items():
            lines.append(f"  {PROBLEMS[key]} ({key}): {len(files)}")
            for name in files[:EXAMPLES]:
                detail = report["details"].get(name)
                lines.append(f"    {name}{f'  ({detail})' if detail else ''}")
            if len(files) > EXAMPLES:
                lines.append(f"    ... and {len(files) - EXAMPLES} more")
    else:
        lines.append("no problems found")
    labelled, pixels = counts["labelled_pixels"], counts["label_pixels"]
    if labelled:
        unlabelled = 100 * (pixels - labelled) / pixels
        lines.append(f"class pixel frequencies (% of {labelled:,} labelled pixels; {unlabelled:.2f}% of "
                     f"{pixels:,} label pixels are ignore or unmapped):")
        width = max(len(n) for n in report["frequencies"])
        lines += [f"  {name:<{width}}  {pct:6.2f}" for name, pct in report["frequencies"].items()]
    else:
        lines.append("class pixel frequencies: no labelled pixels")
    return "\n".join(lines)
