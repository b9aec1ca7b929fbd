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


# -- evaluation protocols: how an image of any size becomes logits at its full resolution -----------------------

PROTOCOL_MODES = ("full", "resize", "slide")


def make_protocol(mode: str = "full", size: tuple[int, int] | None = None, window: tuple[int, int] | None = None,
                  stride: tuple[int, int] | None = None) -> dict:
    """A checked protocol dict, as written into every metrics.json:

    - ``{"mode": "full"}``: the whole image, padded to a multiple of the output stride, logits cropped back;
    - ``{"mode": "resize", "size": [H, W]}``: the input resized (bilinear) to ``size``, the logits resized back
      (bilinear) to the label resolution before the argmax;
    - ``{"mode": "slide", "window": [H, W], "stride": [H, W]}``: windows over the full-resolution image (the last
      one aligned to the border; ``stride`` defaults to half the window), overlapping logits averaged.

    A ``description`` in words is added. ValueError naming the option on a bad combination.
    """
    def pair(name: str, value) -> list[int]:
        if value is None or len(value) != 2 or min(int(v) for v in value) < 1:
            raise ValueError(f"protocol {mode}: --{name} needs two positive integers H W, got {value}")
        return [int(v) for v in value]

    extra = {k: v for k, v in (("size", size), ("window", window), ("stride", stride)) if v is not None}
    allowed = {"full": set(), "resize": {"size"}, "slide": {"window", "stride"}}
    if mode not in allowed:
        raise ValueError(f"protocol {mode!r}: choose one of {', '.join(PROTOCOL_MODES)}")
    if set(extra) - allowed[mode]:
        raise ValueError(f"protocol {mode}: --{sorted(set(extra) - allowed[mode])[0]} does not apply "
                         f"(resize takes --size; slide takes --window and --stride)")
    if mode == "full":
        return {"mode": "full", "description": "whole image at its own resolution, padded (replicate) to a "
                                               "multiple of 32 and cropped back; labels at full resolution"}
    if mode == "resize":
        size = pair("size", size)
        return {"mode": "resize", "size": size, "description": f"input resized (bilinear) to {size[0]}x{size[1]}, "
                "logits resized (bilinear) back to the full label resolution before the argmax"}
    window = pair("window", window)
    stride = pair("stride", stride) if stride is not None else [max(w // 2, 1) for w in window]
    if stride[0] > window[0] or stride[1] > window[1]:
        raise ValueError(f"protocol slide: --stride {stride} larger than --window {window} leaves pixels unseen")
    return {"mode": "slide", "window": window, "stride": stride,
            "description": f"sliding {window[0]}x{window[1]} windows, stride {stride[0]}x{stride[1]}, over the "
                           "full-resolution image (last window aligned to the border); overlapping logits averaged"}


def predict_resize(segmenter: torch.nn.Module, image: torch.Tensor, size: tuple[int, int],
                   multiple: int = 32) -> torch.Tensor:
    """float [B, 3, H, W] -> logits float [B, C, H, W] computed at ``size`` = (h, w) (bilinear both ways)."""
    height, width = image.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if size != (height, width):
        image = nnf.interpolate(image, size=size, mode="bilinear", align_corners=False)
    logits = predict_padded(segmenter, image, multiple)
    if size != (height, width):
        logits = nnf.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` every ``stride`` over ``length``, the last one ending at the border
    (one window at 0 when ``window >= length``)."""
    if window >= length:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def predict_slide(segmenter: torch.nn.Module, image: torch.Tensor, window: tuple[int, int],
                  stride: tuple[int, int], multiple: int = 32) -> torch.Tensor:
    """float [B, 3, H, W] -> logits float [B, C, H, W]: the sum of the (padded) logits of every window covering a
    pixel divided by their count. A window larger than the image shrinks to the image."""
    height, width = image.shape[-2:]
    win_h, win_w = min(int(window[0]), height), min(int(window[1]), width)
    total, count = None, image.new_zeros(1, 1, height, width)
    for top in window_starts(height, win_h, int(stride[0])):
        for left in window_starts(width, win_w, int(stride[1])):
            logits = predict_padded(segmenter, image[..., top:top + win_h, left:left + win_w], multiple)
            if total is None:
                total = logits.new_zeros(*logits.shape[:2], height, width)
            total[..., top:top + win_h, left:left + win_w] += logits
            count[..., top:top + win_h, left:left + win_w] += 1
    return total / count


def predict(segmenter: torch.nn.Module, image: torch.Tensor, protocol: dict | None = None,
            multiple: int = 32) -> torch.Tensor:
    """Logits at the input's resolution under ``protocol`` (see ``make_protocol``; None = full).
    float [B, 3, H, W] in [0, 1] -> float [B, C, H, W]."""
    mode = (protocol or {}).get("mode", "full")
    if mode == "full":
        return predict_padded(segmenter, image, multiple)
    if mode == "resize":
        return predict_resize(segmenter, image, protocol["size"], multiple)
    if mode == "slide":
        return predict_slide(segmenter, image, protocol["window"], protocol["stride"], multiple)
    raise ValueError(f"protocol {mode!r}: choose one of {', '.join(PROTOCOL_MODES)}")


# -- calibration ---------------------------------------------------------------------------------------------

def calibration_bins(confidence: torch.Tensor, correct: torch.Tensor, num_bins: int = 15
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per confidence bin: pixel count (int64 [M]), confidence sum and correct-pixel count (float64 [M]).

    Bins are equal-width over [0, 1], right-closed: bin ``i`` holds ``i/M < confidence <= (i+1)/M`` (0 goes to
    the first). ``confidence``: float [...] (max softmax probability); ``correct``: bool [...], same shape.
    """
    confidence = confidence.reshape(-1).double()
    index = (torch.ceil(confidence * num_bins).long() - 1).clamp(0, num_bins - 1)
    count = torch.bincount(index, minlength=num_bins)
    conf_sum = torch.zeros(num_bins, dtype=torch.float64, device=confidence.device).index_add_(0, index, confidence)
    acc_sum = torch.bincount(index, weights=correct.reshape(-1).double(), minlength=num_bins)
    return count, conf_sum, acc_sum


def expected_calibration_error(count: torch.Tensor, conf_sum: torch.Tensor, acc_sum: torch.Tensor) -> float:
    """ECE = sum over bins of (n_b / N) |accuracy_b - confidence_b|, in [0, 1] (NaN with no pixels)."""
    total = count.sum()
    return float((acc_sum.double() - conf_sum.double()).abs().sum() / total) if total > 0 else math.nan


class Calibration(Metric):
    """Accumulates confidence-bin statistics over batches (and processes, by summation) for the ECE and a
    reliability diagram. Pixels whose label is ``ignore_index`` count nowhere."""

    full_state_update = False

    def __init__(self, num_bins: int = 15, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.num_bins, self.ignore_index = num_bins, ignore_index
        self.add_state("count", torch.zeros(num_bins, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("conf_sum", torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("acc_sum", torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, confidence: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> None:
        """confidence: float [B, H, W] max softmax probability; pred, target: int [B, H, W]."""
        valid = target != self.ignore_index
        count, conf_sum, acc_sum = calibration_bins(confidence[valid], pred[valid] == target[valid], self.num_bins)
        self.count += count
        self.conf_sum += conf_sum
        self.acc_sum += acc_sum

    def compute(self) -> dict:
        """``ece`` (percent) and ``calibration``: bin ``edges`` [M + 1], per-bin ``count``, mean ``confidence``
        and ``accuracy`` (in [0, 1]; None for an empty bin)."""
        count = self.count.cpu()
        mean = lambda s: [None if n == 0 else round(float(v) / int(n), 6) for v, n in zip(s.cpu(), count)]  # noqa: E731
        ece = expected_calibration_error(count, self.conf_sum.cpu(), self.acc_sum.cpu())
        return {"ece": None if math.isnan(ece) else round(100 * ece, 6),
                "calibration": {"num_bins": self.num_bins,
                                "edges": [round(i / self.num_bins, 6) for i in range(self.num_bins + 1)],
                                "count": count.tolist(), "confidence": mean(self.conf_sum),
                                "accuracy": mean(self.acc_sum)}}
