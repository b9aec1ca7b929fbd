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

from adapt.data.cityscapes import PairedDataset
from adapt.data.flat import walk_flat
from adapt.data.pairs import Tree, pair_files
from adapt.errors import DataError

LAYOUT = "GTA5 needs ROOT/images/NNNNN.png and ROOT/labels/NNNNN.png (unpack the image and label archives into ROOT)"


def walk_gta5(root: Path, list_file: str | Path | None = None) -> Tree:
    """The GTA5 download layout, a flat one: ``root/images/NNNNN.png``, ``root/labels/NNNNN.png``; ``names``: the
    list file's stems (in its order) or every image. DataError when ``images/`` is missing or empty."""
    return walk_flat(root, "images", "labels", list_file, LAYOUT)


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
        label_dir = self.root / "labels"
        tree = walk_gta5(self.root, list_file)
        if labels and not label_dir.is_dir():
            raise DataError(f"{label_dir}: folder not found; unpack the GTA5 label archives into ROOT "
                            "or use labels=False")
        pairs = pair_files(tree, labels, lambda name, image: label_dir / f"{name}.png", self.root / "images",
                           "check that both folders hold NNNNN.png", list_file, skip_unlabelled=True)
        self.unpaired = pairs.unpaired
        if self.unpaired:
            warnings.warn(f"{self.root}: skipping {len(self.unpaired)} unpaired GTA5 files (images without a label "
                          f"or labels without an image; first: {self.unpaired[0]}); {len(pairs.names)} pairs remain",
                          stacklevel=2)
        self.names, self.images, self.label_files = pairs.names, pairs.images, pairs.label_files
