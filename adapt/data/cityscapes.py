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
from typing import Callable, Sequence

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS
from PIL import Image

from adapt.data.folder import ImageLabelDataset, Tree
from adapt.data.labels import IGNORE_INDEX, ClassSet, default_palette
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
"""The 19 Cityscapes train classes; ``ids`` are their label ids (the values in ``*_labelIds.png`` and GTA5 labels)."""


def label_id_to_train_index() -> np.ndarray:
    """uint8 [256]: Cityscapes label id -> train id (0..18), or 255 for every other value (from the official table)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in _CITYSCAPES_LABELS:
        if 0 <= label.id < 256 and 0 <= label.trainId < 255 and not label.ignoreInEval:
            lut[label.id] = label.trainId
    return lut


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


def read_list_file(list_file: str | Path, suffix: str = "") -> list[str]:
    """Stems listed in ``list_file``, one per line: a path (any folders, with or without ``.png``) or a bare stem;
    a trailing ``suffix`` (e.g. ``_leftImg8bit``) is removed. Blank lines and ``#`` comments are skipped."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DataError(f"{list_file}: list file not found; give an existing file of image names, one per line")
    stems = []
    for line in list_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.replace("\\", "/").rsplit("/", 1)[-1]
        name = name[:-4] if name.lower().endswith((".png", ".jpg")) else name
        stems.append(name[: -len(suffix)] if suffix and name.endswith(suffix) else name)
    if not stems:
        raise DataError(f"{list_file}: list file is empty; list at least one image")
    return stems


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
        image_dir = self.root / "leftImg8bit" / split
        images = walk_cityscapes(self.root, split).images
        if list_file is not None:
            names = read_list_file(list_file, suffix="_leftImg8bit")
            missing = [n for n in names if n not in images]
            if missing:
                raise DataError(f"{list_file}: {len(missing)} listed images are not in {image_dir} "
                                f"(first: {missing[0]})")
        else:
            names = list(images)
        self.names = names
        self.images = [images[n] for n in names]
        self.label_files = [self.root / "gtFine" / split / p.parent.name / f"{n}{LABEL_SUFFIX}"
                            for n, p in zip(names, self.images)]
        if labels:
            missing = [p for p in self.label_files if not p.is_file()]
            if missing:
                raise DataError(f"{missing[0]}: label not found ({len(missing)} of {len(names)} images have no "
                                "label); unpack gtFine_trainvaltest.zip into ROOT or use labels=False")


def write_tiny_cityscapes(root: str | Path, split: str = "val", cities: Sequence[str] = ("aachen", "bremen"),
                          per_city: int = 2, size: tuple[int, int] = (64, 128), seed: int = 0) -> list[Path]:
    """Test / demo helper: a tiny fake Cityscapes split in the official layout (random RGB images, random
    ``*_gtFine_labelIds.png`` with label ids drawn from 0..33, as real gtFine files hold). Returns the image paths, sorted."""
    root, rng, paths = Path(root), np.random.default_rng(seed), []
    for city in cities:
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        for i in range(per_city):
            stem = f"{city}_{i:06d}_000019"
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            label = rng.integers(0, 34, size).astype(np.uint8)
            path = root / "leftImg8bit" / split / city / f"{stem}{IMAGE_SUFFIX}"
            Image.fromarray(image).save(path)
            Image.fromarray(label).save(root / "gtFine" / split / city / f"{stem}{LABEL_SUFFIX}")
            paths.append(path)
    return sorted(paths)
