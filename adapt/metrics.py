"""Segmentation metrics from one confusion matrix accumulated over a whole split (DDP-synced by summation).

mIoU is the macro mean of per-class IoU = TP / (TP + FP + FN) over the classes that occur in the labels or the
predictions; a class absent from both has no IoU (NaN) and does not count. Ignore pixels (255) count nowhere.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as nnf
from torchmetrics import Metric

from adapt.data.labels import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """int64 [C, C], rows = label, columns = prediction.

    Args:
        pred: int [...] predicted train indices.
        target: int [...] label train indices; ``ignore_index`` pixels are skipped.
    """
    valid = target != ignore_index
    if valid.any() and (target[valid].max() >= num_classes or target[valid].min() < 0):
        raise ValueError(f"confusion_matrix: label values outside 0..{num_classes - 1} (and not {ignore_index})")
    if pred.numel() and (pred.max() >= num_classes or pred.min() < 0):
        raise ValueError(f"confusion_matrix: predictions outside 0..{num_classes - 1}; map them to classes first")
    index = target[valid].long() * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """float64 [C] in [0, 1]; NaN for a class absent from both labels and predictions."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


def mean_iou(cm: torch.Tensor) -> float:
    """Macro mean of the defined per-class IoUs, in [0, 1] (NaN when no class is defined)."""
    iou = iou_per_class(cm)
    return float(iou.nanmean()) if (~iou.isnan()).any() else math.nan


def pixel_accuracy(cm: torch.Tensor) -> float:
    """Correct labelled pixels / labelled pixels, in [0, 1]."""
    total = cm.sum()
    return float(cm.diagonal().sum().double() / total) if total > 0 else math.nan


def summarize(cm: torch.Tensor, class_names: list[str]) -> dict:
    """The metrics of a confusion matrix in percent: ``miou``, ``per_class_iou`` (name -> value or None),
    ``pixel_accuracy``."""
    iou = iou_per_class(cm)
    pct = lambda v: None if math.isnan(v) else round(100 * v, 6)  # noqa: E731
    return {"miou": pct(mean_iou(cm)),
            "per_class_iou": {name: pct(float(v)) for name, v in zip(class_names, iou)},
            "pixel_accuracy": pct(pixel_accuracy(cm))}


class ConfusionMatrix(Metric):
    """Accumulates an int64 [C, C] confusion matrix over batches (and processes, by summation)."""

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("cm", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: int [B, H, W]."""
        self.cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def compute(self) -> torch.Tensor:
        return self.cm


def predict_padded(segmenter: torch.nn.Module, image: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """Logits for a whole image of any size: pad right/bottom (replicate) to a multiple of ``multiple``, run,
    crop back. float [B, 3, H, W] in [0, 1] -> float [B, C, H, W]."""
    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        image = nnf.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
    return segmenter(image)[..., :height, :width]
