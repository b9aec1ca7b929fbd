"""Flat simulator layouts (SYNTHIA, CARLA): ``ROOT/IMAGES/NAME.png`` beside ``ROOT/LABELS/NAME.png``, with an
optional list file of stems, labels of the 19 Cityscapes train classes. The walk and the dataset shared by the
layouts; each layout says where its folders are and how its label files are read (``read_raw_label``, ``lut``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from adapt.data.cityscapes import PairedDataset
from adapt.data.pairs import Tree, images_in, pair_files, read_list_file
from adapt.errors import DataError


def walk_flat(root: Path, image_sub: str, label_sub: str, list_file: str | Path | None, layout: str,
              skip_suffix: str = "") -> Tree:
    """``root/image_sub/NAME.png|jpg`` and ``root/label_sub/NAME.png``; ``names``: the list file's stems (in its
    order) or every image. Label files whose stem ends with ``skip_suffix`` (a converter's output written beside
    the originals) are not labels of this layout. ``layout`` ("SYNTHIA needs ROOT/RGB/*.png and ...") completes
    the DataError when the image folder is missing or empty."""
    image_dir, label_dir = root / image_sub, root / label_sub
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: folder not found; {layout} (check root)")
    images = images_in(image_dir)
    if not images:
        raise DataError(f"{image_dir}: no .png/.jpg images found; {layout}")
    labels = {p.stem: p for p in sorted(label_dir.glob("*.png"))
              if not (skip_suffix and p.stem.endswith(skip_suffix))} if label_dir.is_dir() else {}
    orphans = [p for n, p in labels.items() if n not in images]
    names = read_list_file(list_file) if list_file is not None else list(images)
    return Tree(names, images, labels, orphans)


class FlatDataset(PairedDataset):
    """A flat layout read through its ``walk`` (a ``walk_flat`` call); every listed image must exist and, with
    ``labels``, have its label. Samples are named by stem.

    Each sample is a dict: ``image`` float32 [3, H, W] in [0, 1]; ``mask`` int64 [H, W] of Cityscapes train ids
    with 255 = ignore (only when ``labels=True``); ``name`` str.
    """

    image_sub, label_sub = "images", "labels"  # the layout's folders under ROOT

    def __init__(self, root: str | Path, labels: bool, transform: Callable | None,
                 list_file: str | Path | None, walk: Callable[[Path, str | Path | None], Tree]) -> None:
        super().__init__(root, labels, transform)
        self.split = None if list_file is None else str(list_file)
        pairs = pair_files(walk(self.root, list_file), labels,
                           lambda name, image: self.root / self.label_sub / f"{name}.png", self.root / self.image_sub,
                           "add the labels, list only labelled images, or use labels=False", list_file)
        self.names, self.images, self.label_files = pairs.names, pairs.images, pairs.label_files
