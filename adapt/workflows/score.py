"""``adapt evaluate --predictions DIR``: score label PNGs that any model wrote against a labelled dataset.

Prediction files are matched by sample name: ``DIR/NAME.png``; for Cityscapes, ACDC and Dark Zurich also the official
result naming ``NAME*.png`` anywhere under ``DIR`` (``frankfurt_000000_000294_leftImg8bit.png``, ``..._pred.png``), as
cityscapesscripts' evaluator finds them. ``id_type`` says what the values are:

- ``label``: label ids: for the layouts of the 19 Cityscapes classes (gta5, cityscapes, acdc, darkzurich, and
  synthia / carla too, whatever their own label files hold) Cityscapes label ids 0..33, as ``adapt predict --id_type
  label`` writes them; for folder the ids of ``classes.yaml``;
- ``train``: train indices ``0..C-1``.

A predicted value that maps to no class (an id ignored in evaluation, a train index >= C, 255) is a *void*
prediction: a miss (false negative) for the pixel's true class and a false positive for no class, exactly as
cityscapesscripts counts predictions of ignored label ids. One confusion matrix is accumulated over the whole set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from adapt.data.datasets import open_dataset
from adapt.data.folder import read_label
from adapt.data.labels import IGNORE_INDEX, ClassSet
from adapt.errors import DataError
from adapt.intervals import per_image_record
from adapt.metrics import check_class_subsets, confusion_matrix, image_counts, summarize
from adapt.report import per_class_table, write_json

ID_TYPES = ("label", "train")


def find_predictions(pred_dir: Path, names: list[str], prefix: bool = False) -> list[Path]:
    """The prediction file of each sample name: ``pred_dir/NAME.png``, else (``prefix``) the one ``NAME*.png``
    under ``pred_dir`` whose name continues with ``_`` or ``.`` after NAME. DataError naming the first missing or
    ambiguous file."""
    candidates = sorted(pred_dir.rglob("*.png")) if prefix else []
    files, missing = [], []
    for name in names:
        path = pred_dir / f"{name}.png"
        if not path.is_file() and prefix:
            matches = [p for p in candidates if p.name.startswith(name) and p.name[len(name)] in "_."]
            if len(matches) > 1:
                raise DataError(f"{pred_dir}: {len(matches)} predictions match sample {name} ({matches[0].name}, "
                                f"{matches[1].name}); keep one file per image")
            path = matches[0] if matches else path
        (files if path.is_file() else missing).append(path)
    if missing:
        pattern = "NAME.png or NAME*.png" if prefix else "NAME.png"
        raise DataError(f"{missing[0]}: prediction not found ({len(missing)} of {len(names)} samples have none); "
                        f"write one label PNG per image, named {pattern} after the sample")
    return files


def prediction_table(classes: ClassSet, id_type: str) -> np.ndarray:
    """int64 [256]: prediction value -> train index, or ``C`` (void) for a value that maps to no class. Label ids
    are those of ``classes`` (the dataset's class set: Cityscapes label ids for every Cityscapes layout)."""
    num_classes = classes.num_classes
    if id_type == "label":
        lut = classes.lookup_table().astype(np.int64)
    elif id_type == "train":
        lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
        lut[:num_classes] = np.arange(num_classes)
    else:
        raise DataError(f"id type {id_type!r}: choose label or train")
    lut[lut == IGNORE_INDEX] = num_classes
    return lut


def score_predictions(predictions: str | Path, root: str | Path, kind: str = "folder", split: str | None = None,
                      id_type: str = "label", out: str | Path | None = None, verbose: bool = True,
                      class_subsets: list[str] | None = None) -> dict:
    """Score the label PNGs in ``predictions`` against the labelled set ``root`` (``kind``, ``split`` as in
    ``adapt.data.datasets.open_dataset``).

    Returns the metrics dict written to ``out/metrics.json`` (default: ``predictions/metrics.json``): ``miou``,
    ``per_class_iou`` (class -> percent or None), ``pixel_accuracy`` (percent), ``num_images``, ``protocol``
    (``{"mode": "predictions", "id_type": ...}``), ``predictions``, ``root``, ``kind``, ``split``; with
    ``class_subsets`` (``[synthia16, synthia13]``) also those means (``adapt.metrics.summarize``); ``per_image``: the
    per-image counts of ``adapt.intervals.per_image_record`` (void predictions count in the union of the true class).
    """
    pred_dir = Path(predictions)
    if not pred_dir.is_dir():
        raise DataError(f"--predictions: {pred_dir} is not a folder; give the folder of predicted label PNGs")
    dataset = open_dataset(kind, str(root), split, labels=True)
    class_subsets = check_class_subsets(class_subsets, list(dataset.classes.names), "--class_subsets")
    pred_lut = prediction_table(dataset.classes, id_type)
    files = find_predictions(pred_dir, dataset.names, prefix=kind in ("cityscapes", "acdc", "darkzurich"))
    num_classes = dataset.classes.num_classes
    cm = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.long)
    images = []  # per-image counts (adapt.intervals)
    for name, label_file, pred_file in zip(dataset.names, dataset.label_files, files):
        target = dataset.read_mask(label_file)
        pred = pred_lut[read_label(pred_file)]
        if pred.shape != target.shape:
            raise DataError(f"{pred_file}: prediction is {pred.shape[1]}x{pred.shape[0]} but label {label_file.name} "
                            f"is {target.shape[1]}x{target.shape[0]}; write predictions at the label's resolution")
        image_cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), num_classes + 1)
        cm += image_cm
        counts = image_counts(image_cm[None])  # void has no IoU of its own: keep the C classes' columns
        images.append(dict(counts, names=[name], intersection=counts["intersection"][:, :num_classes],
                           union=counts["union"][:, :num_classes]))
    split = getattr(dataset, "split", split)  # the split the dataset read (cityscapes, acdc...: val when None)
    metrics = dict(summarize(cm, list(dataset.classes.names), class_subsets), num_images=len(dataset),
                   protocol={"mode": "predictions", "id_type": id_type}, predictions=str(pred_dir),
                   root=str(root), kind=kind, split=split, per_image=per_image_record(images))
    out = Path(out) if out is not None else pred_dir
    write_json(out / "metrics.json", metrics)
    if verbose:
        title = (f"{Path(root).name}{f' [{split}]' if split else ''}: {len(dataset)} images, "
                 f"predictions {pred_dir} ({id_type} ids)")
        print(per_class_table(metrics, title))
        print(f"metrics: {out / 'metrics.json'}")
    return metrics
