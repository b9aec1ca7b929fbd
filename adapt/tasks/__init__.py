"""LightningModules, one per optimization problem."""

from adapt.tasks.segmentation import SegmentationTask
from adapt.tasks.translation import TranslationTask

__all__ = ["SegmentationTask", "TranslationTask"]
