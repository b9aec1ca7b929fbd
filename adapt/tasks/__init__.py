"""LightningModules, one per optimization problem."""

from adapt.tasks.segmentation import SegmentationTask

__all__ = ["SegmentationTask"]
