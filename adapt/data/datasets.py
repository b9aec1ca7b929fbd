"""Open a dataset by its layout (``kind``): the one entry point every verb and the DataModule use."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

from adapt.data.cityscapes import CITYSCAPES_CLASSES, CityscapesDataset
from adapt.data.folder import FolderDataset, ImageLabelDataset
from adapt.data.gta5 import GTA5Dataset
from adapt.data.labels import ClassSet
from adapt.errors import DataError

DatasetKind = Literal["folder", "gta5", "cityscapes"]


def open_dataset(kind: str, root: str, split: str | None, labels: bool,
                 transform: Callable | None = None) -> ImageLabelDataset:
    """A dataset of one of the supported layouts.

    Args:
        kind: ``folder`` (``split``: a list in ``ROOT/splits/``), ``gta5`` (``split``: an optional list file of
            stems) or ``cityscapes`` (``split``: ``train``, ``val`` or ``test``; ``val`` when None).
    """
    match kind:
        case "folder":
            return FolderDataset(root, split, labels=labels, transform=transform)
        case "gta5":
            return GTA5Dataset(root, labels=labels, transform=transform, list_file=split)
        case "cityscapes":
            return CityscapesDataset(root, split or "val", labels=labels, transform=transform)
    raise DataError(f"dataset kind {kind!r}: choose folder, gta5 or cityscapes")


def dataset_classes(kind: str, root: str) -> ClassSet:
    """The class set of a dataset without listing its files."""
    return ClassSet.from_yaml(Path(root) / "classes.yaml") if kind == "folder" else CITYSCAPES_CLASSES
