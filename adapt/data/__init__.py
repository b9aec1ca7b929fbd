"""Datasets, class sets, domain randomization and the DataModules.

The DataModules (``adapt.data.DomainDataModule``, ``adapt.data.SyntheticDataModule``, the class paths recipes
name) import Lightning, so they load on first use: a dataset or a class set can be used without it.
"""

from adapt.data.cityscapes import CITYSCAPES_CLASSES, CityscapesDataset
from adapt.data.datasets import open_dataset
from adapt.data.folder import FolderDataset
from adapt.data.gta5 import GTA5Dataset
from adapt.data.labels import IGNORE_INDEX, ClassSet

__all__ = ["CITYSCAPES_CLASSES", "IGNORE_INDEX", "CityscapesDataset", "ClassSet", "DomainDataModule",
           "FolderDataset", "GTA5Dataset", "SyntheticDataModule", "open_dataset"]


def __getattr__(name: str):
    if name in ("DomainDataModule", "SyntheticDataModule"):
        from adapt.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'adapt.data' has no attribute {name!r}")
