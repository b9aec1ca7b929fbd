"""Open a dataset by its layout (``kind``): the one entry point every verb and the DataModule use, and the one place
that knows each layout's walk and label format (``label_format``, read by ``adapt data check``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from adapt.data.acdc import ACDCDataset, DarkZurichDataset, walk_acdc, walk_darkzurich
from adapt.data.carla import CarlaDataset, carla_lut, carla_valid, read_carla_label, walk_carla
from adapt.data.cityscapes import CITYSCAPES_CLASSES, CityscapesDataset, label_id_values, walk_cityscapes
from adapt.data.folder import FolderDataset, ImageLabelDataset, read_label, walk_folder
from adapt.data.gta5 import GTA5Dataset, walk_gta5
from adapt.data.labels import ClassSet
from adapt.data.pairs import Tree
from adapt.data.synthia import SynthiaDataset, read_synthia_label, synthia_lut, synthia_valid, walk_synthia
from adapt.errors import DataError

DatasetKind = Literal["folder", "gta5", "cityscapes", "synthia", "acdc", "darkzurich", "carla", "carla_legacy"]
KINDS: tuple[str, ...] = DatasetKind.__args__
CITYSCAPES_KINDS = KINDS[1:]  # the layouts labelled with the 19 Cityscapes classes
CARLA_TAGS = {"carla": "0.9.14", "carla_legacy": "0.9.13"}  # kind -> the CARLA tag table its labels hold


def _unknown(kind: str) -> DataError:
    return DataError(f"dataset kind {kind!r}: choose {', '.join(KINDS[:-1])} or {KINDS[-1]}")


def open_dataset(kind: str, root: str, split: str | None, labels: bool,
                 transform: Callable | None = None) -> ImageLabelDataset:
    """A dataset of one of the supported layouts (see ``datasets/README.md`` for the trees).

    Args:
        kind: ``folder`` (``split``: a list in ``ROOT/splits/``); ``gta5``, ``synthia``, ``carla`` (CARLA 0.9.14+
            tags), ``carla_legacy`` (CARLA 0.9.0-0.9.13 tags) (``split``: an optional list file of stems);
            ``cityscapes`` (``train``, ``val`` or ``test``); ``acdc`` (``val``, ``night/val``, ``fog,snow/train``:
            the folders under ``rgb_anon/``, all four conditions when only the split is named); ``darkzurich``
            (``train/night``, ``val/night``, ``val``: all times of day when only the split is named). The split is
            ``val`` when None for cityscapes, acdc and darkzurich.
    """
    match kind:
        case "folder":
            return FolderDataset(root, split, labels=labels, transform=transform)
        case "gta5":
            return GTA5Dataset(root, labels=labels, transform=transform, list_file=split)
        case "cityscapes":
            return CityscapesDataset(root, split or "val", labels=labels, transform=transform)
        case "synthia":
            return SynthiaDataset(root, labels=labels, transform=transform, list_file=split)
        case "acdc":
            return ACDCDataset(root, split, labels=labels, transform=transform)
        case "darkzurich":
            return DarkZurichDataset(root, split, labels=labels, transform=transform)
        case "carla" | "carla_legacy":
            return CarlaDataset(root, labels=labels, transform=transform, list_file=split, tags=CARLA_TAGS[kind])
    raise _unknown(kind)


def dataset_classes(kind: str, root: str) -> ClassSet:
    """The class set of a dataset without listing its files."""
    if kind not in KINDS:
        raise _unknown(kind)
    return ClassSet.from_yaml(Path(root) / "classes.yaml") if kind == "folder" else CITYSCAPES_CLASSES


@dataclass
class LabelFormat:
    """How a layout's files are found and its label files read.

    Attributes:
        tree: the set's files (the layout's own walk).
        split: the split as the walk read it (defaults filled in).
        classes: the train classes.
        read: label file -> [H, W] raw values (uint8, or uint16 for SYNTHIA); DataError when unreadable.
        lut: uint8 [V]: raw value -> train index or 255 (V = 256, or 65536 for SYNTHIA).
        valid: bool [V]: the values a label file may hold (class ids, the layout's other ids, its ignore value).
    """

    tree: Tree
    split: str | None
    classes: ClassSet
    read: Callable[[Path], np.ndarray]
    lut: np.ndarray
    valid: np.ndarray


def label_format(kind: str, root: Path, split: str | None = None) -> LabelFormat:
    """The walk of ``root`` in layout ``kind`` and how its labels read (``adapt data check``). DataError when
    ``root`` lacks what the layout needs."""
    match kind:
        case "folder":
            tree, classes = walk_folder(root, split), ClassSet.from_yaml(root / "classes.yaml")
            return LabelFormat(tree, split, classes, read_label, classes.lookup_table(), classes.valid_values())
        case "gta5" | "cityscapes" | "acdc" | "darkzurich":
            split = (split or "val") if kind != "gta5" else split
            walk = {"gta5": walk_gta5, "cityscapes": walk_cityscapes, "acdc": walk_acdc,
                    "darkzurich": walk_darkzurich}[kind]
            return LabelFormat(walk(root, split), split, CITYSCAPES_CLASSES, read_label,
                               CITYSCAPES_CLASSES.lookup_table(), label_id_values())
        case "synthia":
            return LabelFormat(walk_synthia(root, split), split, CITYSCAPES_CLASSES, read_synthia_label,
                               synthia_lut(), synthia_valid())
        case "carla" | "carla_legacy":
            tags = CARLA_TAGS[kind]
            return LabelFormat(walk_carla(root, split), split, CITYSCAPES_CLASSES, read_carla_label, carla_lut(tags),
                               carla_valid(tags))
    raise _unknown(kind)
