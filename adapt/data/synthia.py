"""SYNTHIA-RAND-CITYSCAPES (Ros et al. 2016) in its download layout::

    ROOT/RGB/NNNNNNN.png           RGB renders (1280x760)
    ROOT/GT/LABELS/NNNNNNN.png     16-bit, 3-channel PNGs: the class id in the first (R) channel, an instance id
                                   in the second (G)

The labels are read with ``cv2.IMREAD_UNCHANGED`` (PIL cannot read 16-bit colour PNGs), whose channel order is BGR:
the class id is channel 2 (R), as in DAFormer's ``tools/convert_datasets/synthia.py`` (``[:, :, -1]``) and in the
readers that use imageio (``[:, :, 0]``, RGB order). SYNTHIA ids map to the 19 Cityscapes train ids with the table of
SYNTHIA's README as DAFormer's converter uses it (``SYNTHIA_TO_TRAIN``), every other value to 255, through a
65536-entry lookup table. Nothing is converted on disk; ``*_labelTrainIds.png`` files that DAFormer's converter
writes beside the originals are not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from adapt.data.flat import FlatDataset, walk_flat
from adapt.data.labels import lookup_table, value_mask
from adapt.data.pairs import Tree
from adapt.errors import DataError

# SYNTHIA class id -> Cityscapes train id (SYNTHIA-RAND-CITYSCAPES README; DAFormer's converter). Terrain (16),
# truck (18) and train (20) are in the table but absent from SYNTHIA-RAND-CITYSCAPES, hence the 16-class protocol.
SYNTHIA_TO_TRAIN = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13,
                    18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
SYNTHIA_IDS = range(23)  # 0 void ... 22 lanemarking: the ids SYNTHIA's README lists (13 parking-slot, 14 road-work,
#                          22 lanemarking and 0 void map to 255)
LAYOUT = ("SYNTHIA-RAND-CITYSCAPES needs ROOT/RGB/NNNNNNN.png and ROOT/GT/LABELS/NNNNNNN.png (unpack the archive "
          "into ROOT)")


def synthia_lut() -> np.ndarray:
    """uint8 [65536]: SYNTHIA class id (a 16-bit value) -> Cityscapes train id, or 255."""
    return lookup_table(SYNTHIA_TO_TRAIN, size=65536)


def synthia_valid() -> np.ndarray:
    """bool [65536]: the values a SYNTHIA class channel may hold (README ids 0..22)."""
    return value_mask(SYNTHIA_IDS, size=65536)


def read_synthia_label(path: Path) -> np.ndarray:
    """uint16 [H, W]: the class channel (R) of a SYNTHIA label PNG; DataError for a missing, unreadable or
    single-channel file."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DataError(f"{path}: cannot decode label (missing, truncated or not a PNG); replace or remove the file")
    if raw.ndim != 3 or raw.shape[2] < 3:
        raise DataError(f"{path}: label has {1 if raw.ndim == 2 else raw.shape[2]} channel(s); SYNTHIA labels are "
                        "the 3-channel 16-bit PNGs of GT/LABELS (class id in R), not converted train-id images")
    return raw[:, :, 2].astype(np.uint16, copy=False)  # BGR(A) order: R is channel 2


def walk_synthia(root: Path, list_file: str | Path | None = None) -> Tree:
    """``root/RGB/NAME.png`` with ``root/GT/LABELS/NAME.png``; ``names``: the list file's stems or every image."""
    return walk_flat(root, "RGB", "GT/LABELS", list_file, LAYOUT, skip_suffix="_labelTrainIds")


class SynthiaDataset(FlatDataset):
    """SYNTHIA-RAND-CITYSCAPES with Cityscapes' 19 train classes (``classes`` is ``CITYSCAPES_CLASSES``; terrain,
    truck and train never occur: score SYNTHIA -> Cityscapes with the 16- and 13-class means, see
    ``adapt.metrics.CLASS_SUBSETS``).

    Each sample is a dict: ``image`` float32 [3, H, W] in [0, 1]; ``mask`` int64 [H, W] of train ids with
    255 = ignore (only when ``labels=True``); ``name`` str (the stem, ``0000000``).

    Args:
        root: the folder holding ``RGB/`` and ``GT/LABELS/``.
        labels: load labels; False serves every image unlabelled.
        transform: an albumentations transform called as ``transform(image=..., mask=...)`` on uint8 arrays.
        list_file: optional text file restricting the set, one stem (``0000000``) or file name per line, in order.
    """

    image_sub, label_sub = "RGB", "GT/LABELS"
    lut = synthia_lut()  # values outside SYNTHIA's ids map to 255 (``adapt data check`` lists such files)

    def __init__(self, root: str | Path, labels: bool = True, transform: Callable | None = None,
                 list_file: str | Path | None = None) -> None:
        super().__init__(root, labels, transform, list_file, walk_synthia)

    def read_raw_label(self, path: Path) -> np.ndarray:
        return read_synthia_label(path)
