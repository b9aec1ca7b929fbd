"""Class sets: names, ids, the id -> train-index lookup table and a colour palette.

A dataset's label PNG holds class *ids* (whatever numbers its ``classes.yaml`` uses). Training and evaluation use
contiguous *train indices* ``0..C-1`` in the order of the class list; everything else (the dataset's ignore value,
unknown ids) becomes ``IGNORE_INDEX`` (255).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from adapt.errors import DataError

IGNORE_INDEX = 255


def lookup_table(to_train: Mapping[int, int], size: int = 256) -> np.ndarray:
    """uint8 [size]: label-file value -> train index for the values of ``to_train``, IGNORE_INDEX for every other
    value (size 256 for 8-bit labels, 65536 for 16-bit ones). The one builder of every layout's table (and of
    ``adapt predict``'s way back, train index -> Cityscapes label id)."""
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    lut[list(to_train)] = np.fromiter(to_train.values(), dtype=np.uint8, count=len(to_train))
    return lut


def value_mask(values: Iterable[int], size: int = 256) -> np.ndarray:
    """bool [size]: True at the label-file values a layout allows (``values`` outside 0..size-1 are left out).
    The one builder of the valid-value masks (the folder dataset's check, ``adapt data check``)."""
    mask = np.zeros(size, dtype=bool)
    mask[[v for v in values if 0 <= v < size]] = True
    return mask


@dataclass(frozen=True)
class ClassSet:
    """An ordered set of classes.

    Args:
        names: class names, in train-index order.
        ids: the value each class has in the label files (same order as ``names``).
        ignore_index: the value of unlabelled pixels in the label files.
    """

    names: tuple[str, ...]
    ids: tuple[int, ...]
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if len(self.names) != len(self.ids):
            raise DataError(f"class set has {len(self.names)} names but {len(self.ids)} ids")
        if len(set(self.ids)) != len(self.ids):
            dup = sorted({i for i in self.ids if self.ids.count(i) > 1})
            raise DataError(f"class set has duplicate ids {dup}; give every class its own id")
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise DataError(f"class set has duplicate names {dup}; give every class its own name")
        if any(not 0 <= i <= 255 for i in self.ids) or self.ignore_index in self.ids:
            raise DataError(f"class ids must lie in 0..255 and differ from ignore_index {self.ignore_index}")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ClassSet:
        """Read a ``classes.yaml``: ``ignore_index: INT`` and ``classes: [{id: INT, name: STR}, ...]``."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: class file not found; a folder dataset needs classes.yaml "
                            "with 'ignore_index' and 'classes: [{id, name}, ...]'")
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise DataError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the file") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list) or not doc["classes"]:
            raise DataError(f"{path}: expected a mapping with a non-empty 'classes' list of {{id, name}}")
        try:
            ids = tuple(int(c["id"]) for c in doc["classes"])
            names = tuple(str(c["name"]) for c in doc["classes"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: every entry of 'classes' needs an integer 'id' and a 'name'") from None
        try:
            return cls(names, ids, int(doc.get("ignore_index", IGNORE_INDEX)))
        except DataError as err:
            raise DataError(f"{path}: {err}") from None

    def to_yaml(self, path: str | Path, comment: str = "") -> None:
        lines = [f"# {line}" for line in comment.splitlines()]
        doc = {"ignore_index": self.ignore_index,
               "classes": [{"id": i, "name": n} for i, n in zip(self.ids, self.names)]}
        Path(path).write_text("\n".join(lines + [yaml.safe_dump(doc, sort_keys=False)]))

    def lookup_table(self) -> np.ndarray:
        """uint8 [256]: label-file value -> train index (0..C-1) or IGNORE_INDEX."""
        return lookup_table(dict(zip(self.ids, range(self.num_classes))))

    def valid_values(self) -> np.ndarray:
        """bool [256]: the values a label file may hold: the class ids and ``ignore_index`` (when below 256)."""
        return value_mask([*self.ids, self.ignore_index])

    def palette(self) -> np.ndarray:
        """uint8 [C, 3] RGB colours, one per train index (deterministic, well separated)."""
        return default_palette(self.num_classes)


# matplotlib's tab20 colours: 20 well-separated hues for class maps and legends
TAB20 = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
         (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
         (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
         (219, 219, 141), (158, 218, 229))


def default_palette(num_classes: int) -> np.ndarray:
    """uint8 [num_classes, 3]: tab20 for up to 20 classes, else the PASCAL VOC bit-interleaving palette
    (distinct, deterministic colours)."""
    if num_classes <= len(TAB20):
        return np.array(TAB20[:num_classes], dtype=np.uint8).reshape(num_classes, 3)
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        c, value = index + 1, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                value[channel] |= ((c >> channel) & 1) << shift
            c >>= 3
        palette[index] = value
    return palette
