"""LightningModules, one per optimization problem."""

from adapt.tasks.adversarial import AdversarialTask
from adapt.tasks.segmentation import SegmentationTask
from adapt.tasks.self_training import SelfTrainingTask
from adapt.tasks.translation import TranslationTask

__all__ = ["AdversarialTask", "SegmentationTask", "SelfTrainingTask", "TranslationTask"]
