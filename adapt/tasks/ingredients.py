"""The ingredients of EMA-teacher self-training (DACS, DAFormer, HRDA, MIC), one typed object each.

A recipe names the ingredients it uses under ``model.init_args`` (jsonargparse builds each dataclass from its YAML
mapping; ``null`` turns an optional one off), for example MIC on HRDA:

    teacher: {ema_alpha: 0.999, pseudo_threshold: 0.968, mode: train, weighting: batch}
    feature_distance: {weight: 0.005}
    masking: {ratio: 0.7, block: 0.0625}
    multi_resolution: {context_scale: 0.5, detail_crop: [512, 512]}

Defaults are the published values. Each checks its own values (``ConfigError`` naming the recipe key). A task
records them in its hyperparameters as plain dicts (``record``), so that checkpoints load with
``torch.load(weights_only=True)``; ``ingredient`` turns such a dict back into the object. Rare-class sampling, an
ingredient of the data, is ``adapt.data.rare_class.RareClassSampling``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal, TypeVar

import torch

from adapt.errors import ConfigError
from adapt.losses import pixel_cross_entropy
from adapt.nets.hrda import MultiResolutionOutput

KEY = "model.init_args"
# DAFormer's thing classes (Cityscapes names): the classes the ImageNet feature distance applies to by default
CITYSCAPES_THINGS = ("traffic light", "traffic sign", "person", "rider", "car", "truck", "bus", "train",
                     "motorcycle", "bicycle")


def _share(key: str, value: float, closed: bool = False) -> None:
    """ConfigError unless ``value`` lies in [0, 1) ([0, 1] when ``closed``)."""
    if not (0 <= value <= 1 if closed else 0 <= value < 1):
        raise ConfigError(f"{KEY}.{key}: {value}; give a value in [0, 1{']' if closed else ')'}")


def _positive(key: str, value: float, off: str) -> None:
    if not value > 0:
        raise ConfigError(f"{KEY}.{key}: {value}; give a weight > 0 (or {KEY}.{off}: null to turn it off)")


@dataclass(frozen=True)
class Teacher:
    """The EMA teacher and its pseudo-labels (DACS, DAFormer); always present.

    Args:
        ema_alpha: the teacher's EMA weight, in [0, 1) (DAFormer: 0.999); 0 makes the teacher the current student.
        pseudo_threshold: confidence at or above which a pixel counts as sure, in [0, 1) (DAFormer: 0.968).
        confidence_weighting: weight the pseudo-labels by the share of sure pixels (else 1).
        mode: ``train`` (DAFormer): the teacher labels in train mode (BatchNorm normalizes with the target batch's
            statistics and records none; dropout and drop-path off) and the EMA averages its parameters only;
            ``eval``: it labels in eval mode (its running statistics) and the EMA averages its BatchNorm statistics
            too (under DDP taken from process 0).
        weighting: ``batch`` (DAFormer): one share of sure pixels for the whole batch (of a process); ``image``:
            each image its own share.
    """

    ema_alpha: float = 0.999
    pseudo_threshold: float = 0.968
    confidence_weighting: bool = True
    mode: Literal["train", "eval"] = "train"
    weighting: Literal["batch", "image"] = "batch"

    def __post_init__(self) -> None:
        _share("teacher.ema_alpha", self.ema_alpha)
        _share("teacher.pseudo_threshold", self.pseudo_threshold)
        for key, allowed in (("mode", ("train", "eval")), ("weighting", ("batch", "image"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{KEY}.teacher.{key}: {getattr(self, key)!r}; choose {' or '.join(allowed)}")


@dataclass(frozen=True)
class FeatureDistance:
    """DAFormer's ImageNet feature distance: the L2 distance between F's deepest encoder features of the source
    image and those of a frozen copy of the encoder as built (its ImageNet weights), over the feature cells that
    ``classes`` cover (>= 75 % of a cell's pixels). Needs ``encoder_weights``.

    Args:
        weight: its weight in the loss, > 0 (DAFormer: 0.005).
        classes: names of the thing classes it applies to; None: DAFormer's Cityscapes things among the classes.
    """

    weight: float = 0.005
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        _positive("feature_distance.weight", self.weight, "feature_distance")

    def class_indices(self, class_names: list[str]) -> torch.Tensor:
        """int64 [K]: train indices of ``classes`` among ``class_names`` (sorted)."""
        names = [n for n in CITYSCAPES_THINGS if n in class_names] if self.classes is None else list(self.classes)
        unknown = [n for n in names if n not in class_names]
        if unknown:
            raise ConfigError(f"{KEY}.feature_distance.classes: {unknown} are not among the classes {class_names}; "
                              "name thing classes of this class set")
        return torch.tensor(sorted(class_names.index(n) for n in names), dtype=torch.long)


@dataclass(frozen=True)
class Masking:
    """MIC's masked image consistency: the student sees the colour-augmented target image with square blocks
    hidden and learns the teacher's pseudo-labels of the whole, unmasked image. One more student pass.

    Args:
        ratio: share of hidden blocks, in (0, 1) (MIC: 0.7).
        block: side of a block as a share of the image height, in (0, 1] (MIC: 64 px of 512, 0.125).
        weight: weight of the masked-image loss, > 0 (MIC: 1).
        record_statistics: the masked pass records F's BatchNorm running statistics like any student pass (MIC);
            false keeps them out (adapt's choice: masked images are not what F is evaluated on).
    """

    ratio: float = 0.7
    block: float = 0.125
    weight: float = 1.0
    record_statistics: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise ConfigError(f"{KEY}.masking.ratio: {self.ratio}; give a share in (0, 1) (MIC: 0.7)")
        if not 0 < self.block <= 1:
            raise ConfigError(f"{KEY}.masking.block: {self.block}; give a share of the image height in (0, 1]")
        _positive("masking.weight", self.weight, "masking")


@dataclass(frozen=True)
class MultiResolution:
    """HRDA's multi-resolution training and inference (``adapt.nets.hrda``): the crop resized by ``context_scale``
    is the context, a full-resolution ``detail_crop`` inside it the detail, fused by a learned scale attention.

    Args:
        context_scale: the context's resolution relative to the crop, 1/k with k dividing F's output stride
            (HRDA: 0.5).
        detail_crop: height and width of the detail crop at full resolution, multiples of F's output stride (32)
            and of the fusion grid (k times F's logit stride: 8 for DAFormer at 0.5) no larger than the training
            crop (HRDA: 512 512); its offsets are multiples of that grid (HRDA: 8 px).
        detail_loss_weight: weight of the detail logits' loss, in [0, 1] (HRDA: 0.1); the fused logits' weighs
            one minus it.
    """

    context_scale: float = 0.5
    detail_crop: tuple[int, int] = (512, 512)
    detail_loss_weight: float = 0.1

    def __post_init__(self) -> None:
        _share("multi_resolution.detail_loss_weight", self.detail_loss_weight, closed=True)


Ingredient = TypeVar("Ingredient")


def ingredient(cls: type[Ingredient], value: Ingredient | dict | None) -> Ingredient | None:
    """``value`` as a ``cls``: itself, built from a dict (a checkpoint's record, a Python caller), or None."""
    return cls(**value) if isinstance(value, dict) else value


def record(value: Any) -> dict | None:
    """An ingredient as a plain dict of plain values (tuples as lists) for hyperparameters; None stays None."""
    if value is None or isinstance(value, dict):
        return value
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(value).items()}


Mean = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def multi_resolution_loss(segmenter: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None,
                          generator: torch.Generator, detail_weight: float, mean: Mean,
                          features: bool = False) -> tuple[torch.Tensor, torch.Tensor, MultiResolutionOutput]:
    """HRDA's loss of ``segmenter`` (with ``multi_resolution``) on the crop ``x`` float [B, 3, H, W] against ``y``
    int64 [B, H, W] (pixel weights ``weight`` float [B, H, W]; None: every pixel weighs 1): a detail box drawn by
    ``generator``, then ``(1 - detail_weight) * CE(fused, y) + detail_weight * CE(detail, y in the box)`` (HRDA's
    ``HRDAHead.losses`` with ``hr_loss_weight``; both logits computed at F's logit stride and upsampled, bilinear,
    to their labels' size as mmseg's ``losses`` resize them; the context logits get no loss, HRDA's
    ``lr_loss_weight`` 0), each term the mean over the global batch's labelled pixels (pixels labelled ignore count
    in it when the caller relabels them with weight 0, as ``SelfTrainingTask``'s ``loss_average: all`` does) by
    ``mean`` (``adapt.losses.global_batch_mean`` bound to the run: (sum, count) -> (loss to backpropagate, value)).

    Returns (loss, value, the pass: ``MultiResolutionOutput``, encoder features of the context if ``features``).
    """
    hrda = segmenter.multi_resolution
    top, left = hrda.sample_box(x.shape[-2:], generator)
    passed = hrda.forward_train(segmenter, x, (top, left), features)
    h, w = hrda.detail_crop
    box = (slice(None), slice(top, top + h), slice(left, left + w))
    if weight is None:  # every HRDA term sums per-pixel weighted losses; here each pixel weighs 1
        weight = torch.ones_like(y, dtype=torch.float32)
    loss_f, value_f = mean(*pixel_cross_entropy(passed.fused, y, weight))
    loss_d, value_d = mean(*pixel_cross_entropy(passed.detail, y[box], weight[box]))
    return ((1 - detail_weight) * loss_f + detail_weight * loss_d, (1 - detail_weight) * value_f
            + detail_weight * value_d, passed)
