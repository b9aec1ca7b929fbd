"""Datasets, class sets, domain randomization and the DataModules."""

from adapt.data.datamodule import DomainDataModule, SyntheticDataModule
from adapt.data.folder import FolderDataset
from adapt.data.labels import IGNORE_INDEX, ClassSet, DataError

__all__ = ["IGNORE_INDEX", "ClassSet", "DataError", "DomainDataModule", "FolderDataset", "SyntheticDataModule"]
