"""Datasets, class sets, domain randomization and the DataModules."""

from adapt.data.cityscapes import CITYSCAPES_CLASSES, CityscapesDataset
from adapt.data.datamodule import DomainDataModule, SyntheticDataModule, open_dataset
from adapt.data.folder import FolderDataset
from adapt.data.gta5 import GTA5Dataset
from adapt.data.labels import IGNORE_INDEX, ClassSet, DataError

__all__ = ["CITYSCAPES_CLASSES", "IGNORE_INDEX", "CityscapesDataset", "ClassSet", "DataError", "DomainDataModule",
           "FolderDataset", "GTA5Dataset", "SyntheticDataModule", "open_dataset"]
