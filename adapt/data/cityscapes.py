"""Cityscapes in its official layout, and the Cityscapes label ids -> 19 train classes map (shared with GTA5).

Layout (``ROOT`` holds the two unpacked archives ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``)::

    ROOT/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    ROOT/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png

The label PNGs hold Cityscapes *label ids* (0..33). ``*_labelTrainIds.png`` are not shipped (``createTrainIdLabelImgs``
makes them), so this loader always maps label ids to the 19 train ids with a 256-entry lookup table built from
``cityscapesscripts.helpers.labels``; every other value becomes ``IGNORE_INDEX`` (255).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS

from adapt.data.folder import ImageLabelDataset
from adapt.data.labels import ClassSet, default_palette, value_mask
from adapt.data.pairs import Tree, pair_files, read_list_file
from adapt.errors import DataError

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


def _train_labels() -> list:
    """The 19 evaluated classes of the official table, in train-id order (one label id per train id)."""
    train = sorted((l for l in _CITYSCAPES_LABELS if 0 <= l.trainId < 255 and not l.ignoreInEval),
                   key=lambda l: l.trainId)
    if [l.trainId for l in train] != list(range(len(train))):
        raise DataError("cityscapesscripts' label table does not give one label id per train id 0..18; "
                        "install cityscapesscripts>=2.2")
    return train


CITYSCAPES_CLASSES = ClassSet(tuple(l.name for l in _train_labels()), tuple(l.id for l in _train_labels()))
"""The 19 Cityscapes train classes; ``ids`` are their label ids (the values in ``*_labelIds.png`` and GTA5 labels),
so ``CITYSCAPES_CLASSES.lookup_table()`` is the label id -> train id table (every other value -> 255)."""


def label_id_values() -> np.ndarray:
    """bool [256]: the values a Cityscapes-style label file may hold: every label id of the official table (0..33,
    the unevaluated ones included) and 255."""
    return value_mask([label.id for label in _CITYSCAPES_LABELS] + [CITYSCAPES_CLASSES.ignore_index])


def label_id_palette() -> np.ndarray:
    """uint8 [256, 3]: the official colour of each label id (0..33), black elsewhere (GTA5's label palette)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in _CITYSCAPES_LABELS:
        if 0 <= label.id < 256:
            palette[label.id] = label.color
    return palette


def class_palette(class_names: list[str]) -> np.ndarray:
    """uint8 [C, 3] RGB, one colour per class: the official Cityscapes colours for the 19 Cityscapes classes, else
    ``default_palette`` (``adapt predict``'s colour PNGs, ``adapt export``'s JSON, the logged pictures)."""
    if list(class_names) == list(CITYSCAPES_CLASSES.names):
        return label_id_palette()[list(CITYSCAPES_CLASSES.ids)]
    return default_palette(len(class_names))


def walk_cityscapes(root: Path, split: str = "val") -> Tree:
    """The official layout: ``root/leftImg8bit/SPLIT/CITY/NAME_leftImg8bit.png`` with its label
    ``root/gtFine/SPLIT/CITY/NAME_gtFine_labelIds.png``; a label whose image is missing or sits in another city
    folder is an orphan (the loader would not find it). DataError when the split has no images."""
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: folder not found; Cityscapes needs ROOT/leftImg8bit/{{split}}/{{city}}/"
                        f"*{IMAGE_SUFFIX} (unpack leftImg8bit_trainvaltest.zip into ROOT, check root and split)")
    images = {p.name[: -len(IMAGE_SUFFIX)]: p for p in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}"))}
    if not images:
        raise DataError(f"{image_dir}: no */*{IMAGE_SUFFIX} images found; expected one folder per city")
    labels, orphans = {}, []
    for path in sorted(label_dir.glob(f"*/*{LABEL_SUFFIX}")):
        name = path.name[: -len(LABEL_SUFFIX)]
        if name in images and images[name].parent.name == path.parent.name:
            labels[name] = path
        else:
            orphans.append(path)
    return Tree(list(images), images, labels, orphans)


class PairedDataset(ImageLabelDataset):
    """A dataset whose label files hold Cityscapes label ids (Cityscapes, GTA5): mapped to the 19 train ids."""

    classes: ClassSet = CITYSCAPES_CLASSES


class CityscapesDataset(PairedDataset):
    """One split of Cityscapes (fine annotations), read in the official layout.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` or ``test`` (the public ``test`` labels are placeholders: use it unlabelled).
        labels: load ``gtFine`` labels (evaluation, oracle); False for the unlabelled target of adaptation.
        transform: an albumentations transform called as ``transform(image=..., mask=...)`` on uint8 arrays.
        list_file: optional text file restricting the set, one image per line, in the given order: a path
            (``leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png``, ``frankfurt/...png``) or a
            stem (``frankfurt_000000_000294``).

    Samples are named by stem (``frankfurt_000000_000294``), cities and files in sorted order.
    """

    def __init__(self, root: str | Path, split: str = "val", labels: bool = True,
                 transform: Callable | None = None, list_file: str | Path | None = None) -> None:
        super().__init__(root, labels, transform)
        self.split = split
        tree = walk_cityscapes(self.root, split)
        if list_file is not None:
            tree.names = read_list_file(list_file, suffix="_leftImg8bit")
        def label_path(name: str, image: Path) -> Path:  # gtFine/SPLIT/CITY/NAME_gtFine_labelIds.png
            return self.root / "gtFine" / split / image.parent.name / f"{name}{LABEL_SUFFIX}"

        pairs = pair_files(tree, labels, label_path, self.root / "leftImg8bit" / split,
                           "unpack gtFine_trainvaltest.zip into ROOT or use labels=False", list_file)
        self.names, self.images, self.label_files = pairs.names, pairs.images, pairs.label_files
