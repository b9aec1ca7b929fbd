"""Frames rendered by the CARLA simulator: an RGB camera and a semantic segmentation camera at the same pose, each
saved raw (``image.save_to_disk(path)``, no ``CityScapesPalette`` conversion)::

    ROOT/rgb/NAME.png          the RGB camera's frame (CARLA writes BGRA data as a 4-channel PNG: alpha is dropped)
    ROOT/semantic/NAME.png     the semantic camera's raw frame: the tag of each pixel in the RED channel
                               (a single-channel PNG of tags is read as the tags themselves)

CARLA renumbered its tags in 0.9.14 (aligned with Cityscapes). Two kinds read the two tables (CARLA's
``ref_sensors`` documentation), both mapped onto the 19 Cityscapes train classes, every other tag to 255:

- ``carla`` (0.9.14 and later): 1 road ... 19 bicycle map one to one; 24 RoadLine -> road (lane markings are part of
  the road in Cityscapes); 0 unlabeled and 20-28 (static, dynamic, other, water, ground, bridge, rail track, guard
  rail) -> 255.
- ``carla_legacy`` (0.9.0 to 0.9.13): 7 road and 6 RoadLine -> road, 8 sidewalk, 1 building, 11 wall, 2 fence,
  5 pole, 18 traffic light, 12 traffic sign, 9 vegetation, 22 terrain, 13 sky, 4 pedestrian -> person (that table has
  no rider), 10 vehicles -> car (no truck, bus, train, motorcycle, bicycle: they are all "vehicles"); 0, 3 other,
  14 ground, 15 bridge, 16 rail track, 17 guard rail, 19 static, 20 dynamic, 21 water -> 255.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import cv2
import numpy as np

from adapt.data.flat import FlatDataset, walk_flat
from adapt.data.labels import lookup_table, value_mask
from adapt.data.pairs import Tree
from adapt.errors import DataError

CarlaTags = Literal["0.9.14", "0.9.13"]
# tag -> Cityscapes train id; ``TAG_COUNT``: tags 0..N-1 exist in the table
CARLA_TO_TRAIN: dict[str, dict[int, int]] = {
    "0.9.14": {**{tag: tag - 1 for tag in range(1, 20)}, 24: 0},
    "0.9.13": {7: 0, 6: 0, 8: 1, 1: 2, 11: 3, 2: 4, 5: 5, 18: 6, 12: 7, 9: 8, 22: 9, 13: 10, 4: 11, 10: 13},
}
TAG_COUNT = {"0.9.14": 29, "0.9.13": 23}
LAYOUT = ("a CARLA dataset needs ROOT/rgb/NAME.png (RGB camera) and ROOT/semantic/NAME.png (semantic segmentation "
          "camera, saved raw: tag in the red channel)")


def carla_lut(tags: CarlaTags = "0.9.14") -> np.ndarray:
    """uint8 [256]: CARLA tag -> Cityscapes train id, or 255, for the tag table of CARLA ``tags``."""
    return lookup_table(CARLA_TO_TRAIN[tags])


def carla_valid(tags: CarlaTags = "0.9.14") -> np.ndarray:
    """bool [256]: the tags of the table (0..28 from 0.9.14, 0..22 before)."""
    return value_mask(range(TAG_COUNT[tags]))


def read_carla_label(path: Path) -> np.ndarray:
    """uint8 [H, W]: the red channel of a raw semantic-camera PNG (or a single-channel PNG of tags)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DataError(f"{path}: cannot decode label (missing, truncated or not a PNG); replace or remove the file")
    if raw.dtype != np.uint8:
        raise DataError(f"{path}: label is {raw.dtype}; CARLA's semantic camera writes 8-bit PNGs (tag in red)")
    if raw.ndim == 3 and raw.shape[2] < 3:
        raise DataError(f"{path}: label has {raw.shape[2]} channels; save the semantic camera's raw BGRA frame")
    return raw[:, :, 2] if raw.ndim == 3 else raw  # BGR(A) order: R is channel 2


def walk_carla(root: Path, list_file: str | Path | None = None) -> Tree:
    """``root/rgb/NAME.png`` with ``root/semantic/NAME.png``; ``names``: the list file's stems or every image."""
    return walk_flat(root, "rgb", "semantic", list_file, LAYOUT)


class CarlaDataset(FlatDataset):
    """CARLA frames with Cityscapes' 19 train classes (``classes`` is ``CITYSCAPES_CLASSES``).

    Each sample is a dict: ``image`` float32 [3, H, W] in [0, 1]; ``mask`` int64 [H, W] of train ids with
    255 = ignore (only when ``labels=True``); ``name`` str (the stem).

    Args:
        root: the folder holding ``rgb/`` and ``semantic/``.
        labels: load labels; False serves every image unlabelled.
        transform: an albumentations transform called as ``transform(image=..., mask=...)`` on uint8 arrays.
        list_file: optional text file restricting the set, one stem or file name per line, in order.
        tags: the tag table the frames were rendered with: ``0.9.14`` (CARLA 0.9.14 and later, kind ``carla``) or
            ``0.9.13`` (CARLA 0.9.0 to 0.9.13, kind ``carla_legacy``).
    """

    image_sub, label_sub = "rgb", "semantic"

    def __init__(self, root: str | Path, labels: bool = True, transform: Callable | None = None,
                 list_file: str | Path | None = None, tags: CarlaTags = "0.9.14") -> None:
        if tags not in CARLA_TO_TRAIN:
            raise DataError(f"CARLA tags {tags!r}: choose 0.9.14 (kind carla) or 0.9.13 (kind carla_legacy)")
        super().__init__(root, labels, transform, list_file, walk_carla)
        self.tags = tags
        self.lut = carla_lut(tags)  # tags outside the table map to 255 (``adapt data check`` lists such files)

    def read_raw_label(self, path: Path) -> np.ndarray:
        return read_carla_label(path)
