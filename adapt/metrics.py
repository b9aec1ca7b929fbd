"""Metrics: the confusion matrix and calibration of a whole split, and label-free scores of predictions (all
DDP-synced by summation). The protocols that turn images into logits are in ``adapt.inference``.

mIoU is the macro mean of per-class IoU = TP / (TP + FP + FN) over the classes that occur in the labels or the
predictions; a class absent from both has no IoU (NaN) and does not count. Ignore pixels (255) count nowhere.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch.nn import functional as nnf
from torchmetrics import Metric

from adapt.data.labels import IGNORE_INDEX
from adapt.errors import ConfigError
from adapt.losses import entropy


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """int64 [C, C], rows = label, columns = prediction.

    Args:
        pred: int [...] predicted train indices.
        target: int [...] label train indices; ``ignore_index`` pixels are skipped.
    """
    return confusion_matrices(pred[None], target[None], num_classes, ignore_index)[0]


def confusion_matrices(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                       ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """One confusion matrix per image: int64 [B, C, C]. pred, target: int [B, ...] (see ``confusion_matrix``)."""
    valid = target != ignore_index
    if valid.any() and (target[valid].max() >= num_classes or target[valid].min() < 0):
        raise ValueError(f"confusion_matrix: label values outside 0..{num_classes - 1} (and not {ignore_index})")
    if pred.numel() and (pred.max() >= num_classes or pred.min() < 0):
        raise ValueError(f"confusion_matrix: predictions outside 0..{num_classes - 1}; map them to classes first")
    image = torch.arange(pred.shape[0], device=pred.device).view(-1, *[1] * (pred.dim() - 1)).expand_as(pred)
    index = (image[valid] * num_classes + target[valid].long()) * num_classes + pred[valid].long()
    return torch.bincount(index, minlength=pred.shape[0] * num_classes**2).view(-1, num_classes, num_classes)


def image_counts(matrices: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image counts of per-image confusion matrices int [B, C, C] (``adapt.intervals`` reads them):
    ``intersection`` (TP) and ``union`` (TP + FP + FN) int64 [B, C], labelled ``pixels`` and ``correct`` pixels
    int64 [B]. Summed over images: the summed matrix's diagonal, row sum + column sum - diagonal, total and trace."""
    tp = matrices.diagonal(dim1=1, dim2=2)
    return {"intersection": tp, "union": matrices.sum(1) + matrices.sum(2) - tp, "pixels": matrices.sum((1, 2)),
            "correct": tp.sum(1)}


def iou_per_class(cm: torch.Tensor) -> torch.Tensor:
    """float64 [C] in [0, 1]; NaN for a class absent from both labels and predictions."""
    cm = cm.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


def mean_iou(cm: torch.Tensor, num_classes: int | None = None) -> float:
    """Macro mean of the defined per-class IoUs of the first ``num_classes`` classes (all when None), in [0, 1]
    (NaN when no class is defined)."""
    iou = iou_per_class(cm)[:num_classes]
    return float(iou.nanmean()) if (~iou.isnan()).any() else math.nan


def pixel_accuracy(cm: torch.Tensor) -> float:
    """Correct labelled pixels / labelled pixels, in [0, 1]."""
    total = cm.sum()
    return float(cm.diagonal().sum().double() / total) if total > 0 else math.nan


# Class subsets of published protocols: subset -> (metric name, classes, what it is). SYNTHIA -> Cityscapes results
# are the mean over the 16 classes SYNTHIA labels (the 19 Cityscapes classes but terrain, truck and train) and over
# 13 of them (also without wall, fence and pole), from the same 19-class confusion matrix (DAFormer, HRDA, MIC
# report both).
SYNTHIA_16 = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
              "sky", "person", "rider", "car", "bus", "motorcycle", "bicycle")
CLASS_SUBSETS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "synthia16": ("miou_16", SYNTHIA_16, "SYNTHIA->Cityscapes 16 classes: the 19 Cityscapes classes but terrain, "
                                         "truck and train"),
    "synthia13": ("miou_13", tuple(n for n in SYNTHIA_16 if n not in ("wall", "fence", "pole")),
                  "SYNTHIA->Cityscapes 13 classes: the 16 but wall, fence and pole"),
}
ClassSubset = Literal["synthia16", "synthia13"]


def check_class_subsets(subsets: list[str] | tuple[str, ...] | None, class_names: list[str], key: str) -> list[str]:
    """``subsets`` as a list; ConfigError naming ``key`` for an unknown subset or one whose classes the model lacks."""
    subsets = list(subsets or [])
    for name in subsets:
        if name not in CLASS_SUBSETS:
            raise ConfigError(f"{key}: class subset {name!r} unknown; choose from {', '.join(CLASS_SUBSETS)}")
        missing = [c for c in CLASS_SUBSETS[name][1] if c not in class_names]
        if missing:
            raise ConfigError(f"{key}: {name} needs the Cityscapes classes; the model has no {missing[0]!r} "
                              f"({len(missing)} missing); drop the subset")
    return subsets


def summarize(cm: torch.Tensor, class_names: list[str], class_subsets: list[str] | tuple[str, ...] = ()) -> dict:
    """The metrics of a confusion matrix in percent: ``miou``, ``per_class_iou`` (name -> value or None),
    ``pixel_accuracy``. A matrix with one row and column more than ``class_names`` counts void predictions in its
    last column (``adapt evaluate --predictions``): they lower the true class's IoU and the accuracy; void has no
    IoU of its own. With ``class_subsets`` (names of ``CLASS_SUBSETS``, checked by ``check_class_subsets``): each
    subset's mean IoU under its metric name (``miou_16``, ``miou_13``: the macro mean of the subset's defined IoUs,
    from the same matrix) and ``class_subsets``: subset -> {``metric``, ``classes``, ``protocol``}."""
    iou = iou_per_class(cm)[: len(class_names)]
    pct = lambda v: None if math.isnan(v) else round(100 * v, 6)  # noqa: E731
    results = {"miou": pct(mean_iou(cm, len(class_names))),
               "per_class_iou": {name: pct(float(v)) for name, v in zip(class_names, iou)},
               "pixel_accuracy": pct(pixel_accuracy(cm))}
    notes = {}
    for subset in class_subsets:
        metric, names, protocol = CLASS_SUBSETS[subset]
        values = iou[[class_names.index(n) for n in names]]
        results[metric] = pct(float(values.nanmean())) if (~values.isnan()).any() else None
        notes[subset] = {"metric": metric, "classes": list(names), "protocol": protocol}
    if notes:
        results["class_subsets"] = notes
    return results


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


# -- label-free scores of predictions (unsupervised validators) ------------------------------------------------
#
# Scores of a segmenter's target predictions that need no target labels. They let a run choose a checkpoint without target labels (``--checkpoint.monitor=val/entropy``). All take softmax
# probabilities ``p`` float [N, C] (pixels as rows) or [B, C, H, W]; natural logarithms (nats).
#
# - ``mean_entropy``: mean over pixels of H(p) = -sum_c p_c log p_c; lower is better (confident predictions).
# - ``information_maximization``: mean entropy minus the entropy of the mean prediction (the diversity term);
#   lower is better: confident per pixel, yet not all pixels in one class.
# - ``soft_neighborhood_density`` (SND, Saito et al., ICCV 2021): pixels' probability vectors, L2-normalised; each
#   pixel's similarities to the others (itself excluded), divided by ``temperature`` and turned into a
#   distribution by softmax; SND is the mean entropy of those distributions; higher is better (dense neighbourhoods).

# validator -> (logged name, "min" or "max": which value is better)
VALIDATORS = {"entropy": ("val/entropy", "min"), "im": ("val/im", "min"), "snd": ("val/snd", "max")}


def _entropy(rows: torch.Tensor) -> torch.Tensor:
    """float [N, C] probabilities -> float [N], nats (``adapt.losses.entropy``)."""
    return entropy(rows, dim=-1, logits=False)


def _rows(probs: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] or [N, C] -> float [N, C]."""
    return probs.movedim(1, -1).reshape(-1, probs.shape[1]) if probs.dim() == 4 else probs


def mean_entropy(probs: torch.Tensor) -> float:
    return _entropy(_rows(probs).double()).mean().item()


def information_maximization(probs: torch.Tensor) -> float:
    rows = _rows(probs).double()
    return _entropy(rows).mean().item() - _entropy(rows.mean(0, keepdim=True)).item()


def soft_neighborhood_density(probs: torch.Tensor, temperature: float = 0.05) -> float:
    rows = nnf.normalize(_rows(probs).double(), dim=-1)
    similarity = rows @ rows.T / temperature
    similarity.fill_diagonal_(-math.inf)
    return _entropy(similarity.softmax(-1)).mean().item()


class Validators(Metric):
    """The three validators over a whole validation set, DDP-synced.

    Entropy and information maximization are exact over every pixel (sums of entropy and of probabilities, summed
    over processes). SND compares pixels pairwise, so it uses ``pixels_per_image`` pixels of each image, drawn by
    a generator seeded by the image's position in its process's stream (the same pixels every round). ``share``:
    each class's share of the predicted (argmax) pixels in percent, float64 [C], every pixel counted (the
    predicted-class counts are summed over processes; ``adapt.report.class_collapses`` reads the shares per round).
    """

    full_state_update = False

    def __init__(self, num_classes: int, pixels_per_image: int = 64, temperature: float = 0.05,
                 max_samples: int = 4096) -> None:
        super().__init__()
        self.pixels_per_image, self.temperature, self.max_samples = pixels_per_image, temperature, max_samples
        self.add_state("entropy_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("prob_sum", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pixels", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("predicted", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("samples", [], dist_reduce_fx="cat")
        self.images = 0

    def update(self, probs: torch.Tensor) -> None:
        """probs: float [B, C, H, W], softmax over C."""
        rows = _rows(probs.detach()).float()
        self.entropy_sum += _entropy(rows).sum(dtype=torch.float64)
        self.prob_sum += rows.sum(0, dtype=torch.float64)
        self.pixels += rows.shape[0]
        self.predicted += torch.bincount(probs.detach().argmax(1).flatten(), minlength=len(self.predicted))
        per_image = probs.shape[-2] * probs.shape[-1]
        for i in range(probs.shape[0]):
            g = torch.Generator().manual_seed(self.images)
            self.images += 1
            picks = torch.randperm(per_image, generator=g)[: self.pixels_per_image].to(rows.device)
            self.samples.append(rows[i * per_image + picks])

    def compute(self) -> dict:
        """``entropy``, ``im``, ``snd`` (floats) and ``share`` (float64 [C], percent)."""
        pixels = self.pixels.clamp_min(1)
        mean_h = (self.entropy_sum / pixels).item()
        marginal = (self.prob_sum / pixels)[None]
        samples = self.samples if isinstance(self.samples, torch.Tensor) else (
            torch.cat(self.samples) if self.samples else torch.zeros(0, len(self.prob_sum)))
        if len(samples) > self.max_samples:
            samples = samples[torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))[
                : self.max_samples].to(samples.device)]
        snd = soft_neighborhood_density(samples, self.temperature) if len(samples) > 1 else math.nan
        share = 100 * self.predicted.double() / self.predicted.sum().clamp_min(1)
        return {"entropy": mean_h, "im": mean_h - _entropy(marginal).item(), "snd": snd, "share": share}

    def reset(self) -> None:
        super().reset()
        self.images = 0
