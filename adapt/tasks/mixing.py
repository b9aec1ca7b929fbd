"""The pieces of EMA-teacher self-training (DACS, DAFormer), as plain functions on tensors.

Images are float [B, 3, H, W] in [0, 1]; labels int64 [B, H, W] of train indices with ``IGNORE_INDEX`` (255) for
pixels no loss sees; probabilities float [B, C, H, W] (softmax over C).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
from torchvision.transforms.v2 import functional as tvf

from adapt.data.labels import IGNORE_INDEX
from adapt.nets.segmenter import batch_norms


def ema_alpha(step: int, alpha: float) -> float:
    """The EMA weight at optimizer step ``step`` (0-based): ``min(1 - 1 / (step + 1), alpha)``, so that the
    teacher follows the student closely at first (it starts as a copy and would otherwise lag behind)."""
    return min(1 - 1 / (step + 1), alpha)


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, alpha: float) -> None:
    """``teacher <- alpha * teacher + (1 - alpha) * student`` for every parameter and floating-point buffer
    (BatchNorm running statistics); integer buffers (BatchNorm's batch counter) are copied. ``alpha = 0``: the
    teacher is the student."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(alpha).add_(s.detach(), alpha=1 - alpha)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        if t.dtype.is_floating_point:
            t.mul_(alpha).add_(s, alpha=1 - alpha)
        else:
            t.copy_(s)


def classmix_masks(labels: torch.Tensor, generator: torch.Generator, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """ClassMix: for each image, half of the classes present in its labels (rounded up; ignore excluded), drawn
    by ``generator``; the mask is True where a pixel's label is one of them.

    labels int64 [B, H, W] -> bool [B, H, W].
    """
    masks = torch.zeros_like(labels, dtype=torch.bool)
    for i, label in enumerate(labels):
        classes = label.unique()
        classes = classes[classes != ignore_index]
        if len(classes) == 0:
            continue
        chosen = classes[torch.randperm(len(classes), generator=generator)[: math.ceil(len(classes) / 2)]
                         .to(classes.device)]
        masks[i] = torch.isin(label, chosen)
    return masks


def mix(mask: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``foreground`` where ``mask`` (bool [B, H, W]) is True, ``background`` elsewhere; images [B, C, H, W]
    (the mask applies to every channel) or per-pixel maps [B, H, W]."""
    if foreground.dim() == 4:
        mask = mask[:, None]
    return torch.where(mask, foreground, background)


def pseudo_labels(probs: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's labels and their confidence weights.

    probs float [B, C, H, W] -> (labels int64 [B, H, W]: the argmax class of every pixel, weights float [B]: the
    share of the image's pixels whose top probability exceeds ``threshold``).
    """
    confidence, labels = probs.max(1)
    return labels, (confidence > threshold).float().mean((1, 2))


def strong_photometric(x: torch.Tensor, generator: torch.Generator, jitter_p: float = 0.2, jitter: float = 0.2,
                       blur_p: float = 0.5, blur_sigma: tuple[float, float] = (0.15, 1.15)) -> torch.Tensor:
    """DACS's strong augmentation of mixed images, per image: with probability ``jitter_p`` colour jitter
    (brightness, contrast, saturation factors in [1 - jitter, 1 + jitter], hue shift in [-jitter/2, jitter/2]
    turns), with probability ``blur_p`` a Gaussian blur of sigma in ``blur_sigma``. All draws from ``generator``.

    float [B, 3, H, W] in [0, 1] -> the same.
    """
    out = []
    for image in x:
        draws = torch.rand(7, generator=generator, dtype=torch.float64).tolist()
        if draws[0] < jitter_p:
            image = tvf.adjust_brightness(image, 1 + jitter * (2 * draws[1] - 1))
            image = tvf.adjust_contrast(image, 1 + jitter * (2 * draws[2] - 1))
            image = tvf.adjust_saturation(image, 1 + jitter * (2 * draws[3] - 1))
            image = tvf.adjust_hue(image, jitter * (draws[4] - 0.5))
        if draws[5] < blur_p:
            sigma = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * draws[6]
            kernel = 2 * math.ceil(3 * sigma) + 1
            image = tvf.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
        out.append(image.clamp(0, 1))
    return torch.stack(out)


def block_masks(shape: tuple[int, int, int], ratio: float, block: int, generator: torch.Generator) -> torch.Tensor:
    """MIC's masks: the image cut into ``block`` x ``block`` squares (the last row and column may be cut short),
    each hidden with probability ``ratio``, drawn by ``generator``.

    shape (B, H, W) -> float [B, 1, H, W]: 0 where hidden, 1 where kept (multiply an image by it).
    """
    batch, height, width = shape
    cells = torch.rand(batch, 1, math.ceil(height / block), math.ceil(width / block), generator=generator)
    keep = (cells >= ratio).float()
    return keep.repeat_interleave(block, 2).repeat_interleave(block, 3)[:, :, :height, :width]


@contextmanager
def statistics_kept(module: torch.nn.Module) -> Iterator[None]:
    """Within the block, train-mode BatchNorm layers of ``module`` still normalize with the batch's statistics but
    leave their running statistics (and batch counter) as they are: for auxiliary inputs such as MIC's masked
    images, whose statistics (70 % black) are not the target's."""
    norms = batch_norms(module)
    saved = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False  # in train mode: batch statistics, nothing recorded (timm's norms alike)
    try:
        yield
    finally:
        for m, track in zip(norms, saved):
            m.track_running_stats = track
