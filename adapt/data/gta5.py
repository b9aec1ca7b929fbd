"""GTA5 ("Playing for Data", Richter et al. 2016) in its download layout::

    ROOT/images/NNNNN.png     RGB game frames (most 1914x1052)
    ROOT/labels/NNNNN.png     palettised PNGs whose *indices* are Cityscapes label ids (0..33)

The labels are read with PIL (indices), never ``cv2.imread`` (which expands the palette into colours), and mapped to
the 19 Cityscapes train ids with the Cityscapes lookup table. Some downloads miss about 25 pairs: images and labels are
paired by stem, and the unpaired ones are skipped and listed in ``unpaired``, never assumed to be 24,966.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from adapt.data.cityscapes import PairedDataset, label_id_palette, read_list_file
from adapt.data.folder import Tree, images_in, labels_in
from adapt.errors import DataError


def walk_gta5(root: Path, list_file: str | Path | None = None) -> Tree:
    """The GTA5 download layout: ``root/images/NNNNN.png``, ``root/labels/NNNNN.png``; ``names``: the list file's
    stems (in its order) or every image. DataError when ``images/`` is missing or empty."""
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: folder not found; GTA5 needs ROOT/images/NNNNN.png and "
                        "ROOT/labels/NNNNN.png (unpack the image and label archives into ROOT, check root)")
    images = images_in(image_dir)
    if not images:
        raise DataError(f"{image_dir}: no .png/.jpg images found")
    names = read_list_file(list_file) if list_file is not None else list(images)
    return Tree(names, images, *labels_in(root / "labels", images))


class GTA5Dataset(PairedDataset):
    """GTA5 with Cityscapes' 19 train classes (``classes`` is ``CITYSCAPES_CLASSES``).

    Each sample is a dict: ``image`` float32 [3, H, W] in [0, 1]; ``mask`` int64 [H, W] of train ids with
    255 = ignore (only when ``labels=True``); ``name`` str (the stem, ``00001``).

    Args:
        root: the folder holding ``images/`` and ``labels/``.
        labels: load labels; False serves every image unlabelled (``labels/`` is then not needed).
        transform: an albumentations transform called as ``transform(image=..., mask=...)`` on uint8 arrays.
        list_file: optional text file restricting the set, one stem (``00001``) or file name (``00001.png``) per
            line, in the given order (e.g. the ``gta5_list/train.txt`` files shipped by AdvEnt-style repositories).

    Attributes:
        unpaired: stems of images without a label and of labels without an image (sorted; empty when
            ``labels=False``); they are skipped, with a warning that gives the count.
    """

    size_hint = "some GTA5 pairs genuinely differ in size: resize or drop the pair"

    def __init__(self, root: str | Path, labels: bool = True, transform: Callable | None = None,
                 list_file: str | Path | None = None) -> None:
        super().__init__(root, labels, transform)
        image_dir, label_dir = self.root / "images", self.root / "labels"
        tree = walk_gta5(self.root, list_file)
        images = tree.images
        self.unpaired: list[str] = []
        all_images = set(images)
        if labels:
            if not label_dir.is_dir():
                raise DataError(f"{label_dir}: folder not found; unpack the GTA5 label archives into ROOT "
                                "or use labels=False")
            label_stems = set(tree.labels)
            self.unpaired = sorted(set(images) ^ label_stems)
            images = {n: p for n, p in images.items() if n in label_stems}
            if not images:
                raise DataError(f"{self.root}: no image in {image_dir} has a label of the same name in {label_dir} "
                                f"({len(self.unpaired)} unpaired files); check that both folders hold NNNNN.png")
        if list_file is not None:
            names = tree.names
            absent = [n for n in names if n not in all_images]
            if absent:
                raise DataError(f"{list_file}: {len(absent)} listed images are not in {image_dir} "
                                f"(first: {absent[0]})")
            names = [n for n in names if n in images]  # listed images without a label are unpaired: skipped
            if not names:
                raise DataError(f"{list_file}: none of the listed images has a label in {label_dir}")
        else:
            names = list(images)
        if self.unpaired:
            warnings.warn(f"{self.root}: skipping {len(self.unpaired)} unpaired GTA5 files (images without a label "
                          f"or labels without an image; first: {self.unpaired[0]}); {len(names)} pairs remain",
                          stacklevel=2)
        self.names = names
        self.images = [images[n] for n in names]
        self.label_files = [label_dir / f"{n}.png" for n in names]


def write_tiny_gta5(root: str | Path, num: int = 4, size: tuple[int, int] = (52, 96), seed: int = 0,
                    palette: bool = True) -> None:
    """Test / demo helper: a tiny fake GTA5 in the download layout (``images/00001.png``...). Labels hold random
    label ids 0..33; with ``palette=True`` they are palettised like the real ones (mode "P" with the Cityscapes
    colours, so a colour differs from its index and ``cv2.imread`` would give the wrong answer), else mode "L"."""
    root, rng = Path(root), np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(1, num + 1):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:05d}.png")
        ids = rng.integers(0, 34, size, dtype=np.uint8)
        label = Image.fromarray(ids)  # mode "L"
        if palette:
            label = Image.frombytes("P", (size[1], size[0]), ids.tobytes())
            label.putpalette(label_id_palette().tobytes())
        label.save(root / "labels" / f"{i:05d}.png")
