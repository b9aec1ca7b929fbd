"""The pieces of EMA-teacher self-training (DACS, DAFormer, MIC) as the official code has them (lhoyer/MIC 2f932a98,
its colour jitter kornia 0.5.8's), as plain functions on tensors.

Images are float [B, 3, H, W] in [0, 1]; labels int64 [B, H, W] of train indices with ``IGNORE_INDEX`` (255) for
pixels no loss sees; probabilities float [B, C, H, W] (softmax over C). Every random draw comes from the
``torch.Generator`` passed in.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Literal

import torch
from torch import nn
from torch.nn import functional as nnf

from adapt.data.labels import IGNORE_INDEX
from adapt.errors import DataError
from adapt.nets.segmenter import batch_norms

JITTER_P = 0.2  # DACS: a batch is jittered when its uniform draw exceeds 0.2 (80 % of batches)
JITTER = 0.2  # strength: brightness, contrast, saturation factors in [0.8, 1.2], hue shift in [-0.2, 0.2] turn
BLUR_P = 0.5  # a batch is blurred when its draw exceeds 0.5
BLUR_SIGMA = (0.15, 1.15)


def ema_alpha(steps: int, alpha: float) -> float:
    """The EMA weight after ``steps`` optimizer steps (>= 1): ``min(1 - 1 / (steps + 1), alpha)``, DAFormer's
    weight at iteration ``steps`` (0.5 after the first step, 2/3 after the second): the teacher, a copy of F at
    first, follows the student closely early on."""
    return min(1 - 1 / (steps + 1), alpha)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float, buffers: bool = False) -> None:
    """``teacher <- alpha * teacher + (1 - alpha) * student`` for every parameter (DAFormer: parameters only, the
    buffers stay as they are). ``buffers``: also every floating-point buffer (BatchNorm running statistics), integer
    buffers (BatchNorm's batch counter) copied. ``alpha = 0``: the teacher's parameters are the student's."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(alpha).add_(s.detach(), alpha=1 - alpha)
    if buffers:
        for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
            if t.dtype.is_floating_point:
                t.mul_(alpha).add_(s, alpha=1 - alpha)
            else:
                t.copy_(s)


def stochastic_modules(module: nn.Module) -> list[nn.Module]:
    """``module``'s dropout layers (torch's ``_DropoutNd``) and drop-path layers (a class named ``DropPath``:
    timm's and its copies), the layers DAFormer switches off in its train-mode teacher."""
    return [m for m in module.modules()
            if isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ == "DropPath"]


@contextmanager
def labelling(teacher: nn.Module, mode: Literal["train", "eval"], frozen_norms: bool = False) -> Iterator[None]:
    """The teacher's state while it labels a batch; eval mode again afterwards.

    ``train`` (DAFormer): train mode, so that BatchNorm normalizes with the labelled batch's statistics (recording
    none: ``statistics_kept``, so the teacher's buffers never change), with dropout and drop-path off
    (``stochastic_modules``); ``frozen_norms``: BatchNorm in eval mode (running statistics). ``eval``: eval mode.
    """
    if mode == "train":
        teacher.train()
        for m in stochastic_modules(teacher) + (batch_norms(teacher) if frozen_norms else []):
            m.eval()
    else:
        teacher.eval()
    try:
        with statistics_kept(teacher):
            yield
    finally:
        teacher.eval()


def pseudo_labels(probs: torch.Tensor, threshold: float,
                  weighting: Literal["batch", "image"] = "batch") -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's labels and their confidence weights (DAFormer's ``get_pseudo_label_and_weight``).

    probs float [B, C, H, W] -> (labels int64 [B, H, W]: the argmax class of every pixel, weights float [B]: the
    share of pixels whose top probability is at least ``threshold``: over the whole batch, the same for every image
    (``batch``, DAFormer), or over each image (``image``)).
    """
    confidence, labels = probs.max(1)
    sure = (confidence >= threshold).float()
    share = sure.mean().expand(len(sure)) if weighting == "batch" else sure.mean((1, 2))
    return labels, share


def pixel_weights(share: torch.Tensor, valid: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    """Each target pixel's pseudo-label weight: its image's ``share`` (float [B]) times ``valid`` (uint8 [B, H, W],
    0 in the pseudo-label margins; None: no margins), applied after the share was computed -> float ``shape``."""
    weight = share[:, None, None].expand(shape)
    if valid is None:
        return weight
    if valid.shape != shape:
        raise DataError(f"the target batch's valid map is {tuple(valid.shape)}, its labels {tuple(shape)}: "
                        "crop the map of data.init_args.pseudo_label_margins with the image")
    return weight * valid.to(weight.dtype)


def classmix_masks(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """ClassMix as DACS draws it: the classes of the whole batch's labels (``IGNORE_INDEX`` included), and for each
    image ``ceil(n / 2)`` of those n, drawn without replacement by ``generator``; an image's mask is True where its
    label is one of its chosen classes (an image may lack some of them).

    labels int64 [B, H, W] -> bool [B, H, W].
    """
    classes = labels.unique()
    masks = torch.zeros_like(labels, dtype=torch.bool)
    for i, label in enumerate(labels):
        pick = torch.randperm(len(classes), generator=generator)[: math.ceil(len(classes) / 2)]
        masks[i] = torch.isin(label, classes[pick.to(classes.device)])
    return masks


def mix(mask: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``foreground`` where ``mask`` (bool [B, H, W]) is True, ``background`` elsewhere; images [B, C, H, W]
    (the mask applies to every channel) or per-pixel maps [B, H, W]."""
    if foreground.dim() == 4:
        mask = mask[:, None]
    return torch.where(mask, foreground, background)


def every_pixel_counted(labels: torch.Tensor, weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, weights) under which ``adapt.losses.pixel_cross_entropy`` counts every pixel, as mmseg's mean does:
    ignored pixels become class 0 at weight 0 (loss 0, yet in the count). labels int64 [B, H, W], weight float
    [B, H, W] or None (1) -> (int64 [B, H, W] without ``IGNORE_INDEX``, float [B, H, W])."""
    ignored = labels == IGNORE_INDEX
    weight = torch.ones_like(labels, dtype=torch.float32) if weight is None else weight
    return labels.masked_fill(ignored, 0), weight.masked_fill(ignored, 0)


def _rgb_to_hsv(x: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float [B, 3, H, W] RGB in [0, 1] -> (hue in turns [0, 1), saturation, value), each [B, 1, H, W]; ties go
    to the first of R, G, B; saturation = (max - min) / (max + eps) (kornia's eps)."""
    value, channel = x.max(1, keepdim=True)
    delta = value - x.min(1, keepdim=True).values
    saturation = delta / (value + eps)
    r, g, b = x.split(1, 1)
    safe = torch.where(delta == 0, torch.ones_like(delta), delta)
    sector = torch.where(channel == 0, (g - b) / safe,
                         torch.where(channel == 1, 2 + (b - r) / safe, 4 + (r - g) / safe))
    return torch.remainder(sector / 6, 1), saturation, value


def _hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The inverse of ``_rgb_to_hsv`` (hue in turns, any real: taken modulo 1) -> float [B, 3, H, W]."""
    six = torch.remainder(hue * 6, 6)
    sector = six.floor()
    f = six - sector
    p, q, t = value * (1 - saturation), value * (1 - f * saturation), value * (1 - (1 - f) * saturation)
    sector = torch.remainder(sector, 6).long()  # (6 from rounding: sector 0 at f = 0)
    # (R, G, B) of the six 60-degree sectors
    red = torch.stack([value, q, p, p, t, value]).gather(0, sector[None])[0]
    green = torch.stack([t, value, value, q, p, p]).gather(0, sector[None])[0]
    blue = torch.stack([p, p, t, value, value, q]).gather(0, sector[None])[0]
    return torch.cat([red, green, blue], 1)


def color_jitter(x: torch.Tensor, generator: torch.Generator, strength: float = JITTER) -> torch.Tensor:
    """kornia 0.5.8's ``ColorJitter(strength, strength, strength, strength)`` on a batch: per image a brightness
    factor b, contrast c, saturation s in [1 - strength, 1 + strength] and hue shift h in [-strength, strength]
    (turns); one random order of the four for the whole batch. Brightness adds b - 1, contrast multiplies by c (each
    then clipped to [0, 1]), saturation multiplies HSV's S (clipped), hue adds h turns to HSV's H.

    float [B, 3, H, W] in [0, 1] -> the same.
    """
    n = x.shape[0]
    draws = torch.rand(4, n, generator=generator).to(x.device)
    brightness, contrast, saturation, hue = (strength * (2 * draws - 1)).view(4, n, 1, 1, 1)
    for op in torch.randperm(4, generator=generator).tolist():
        if op == 0:
            x = (x + brightness).clamp(0, 1)
        elif op == 1:
            x = (x * (1 + contrast)).clamp(0, 1)
        else:
            h, s, v = _rgb_to_hsv(x)
            x = _hsv_to_rgb(h, (s * (1 + saturation)).clamp(0, 1), v) if op == 2 else _hsv_to_rgb(h + hue, s, v)
    return x


def blur_kernel_size(side: int) -> int:
    """DACS's Gaussian kernel size for an image side of ``side`` px: ceil(0.1 x side), less one when even (51 for
    512, 103 for 1024)."""
    size = math.ceil(0.1 * side)
    return size if size % 2 else size - 1


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """kornia's ``GaussianBlur2d`` with DACS's kernel: a Gaussian of standard deviation ``sigma`` sampled at integer
    offsets and normalized to sum 1, ``blur_kernel_size`` taps per side, borders reflected; in float32.

    float [B, C, H, W] -> the same.
    """
    with torch.autocast(x.device.type, enabled=False):
        out = x.float()
        for dim in (2, 3):
            size = blur_kernel_size(x.shape[dim])
            if size == 1:
                continue
            taps = torch.arange(size, device=x.device, dtype=torch.float32) - size // 2
            kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
            shape = (1, 1, size, 1) if dim == 2 else (1, 1, 1, size)
            kernel = (kernel / kernel.sum()).view(shape).expand(out.shape[1], *shape[1:])
            pad = (0, 0, size // 2, size // 2) if dim == 2 else (size // 2, size // 2, 0, 0)
            out = nnf.conv2d(nnf.pad(out, pad, mode="reflect"), kernel, groups=out.shape[1])
    return out.to(x.dtype)


def strong_transform(x: torch.Tensor, generator: torch.Generator, per_image: bool = True, blur: bool = True,
                     jitter_p: float = JITTER_P) -> torch.Tensor:
    """DACS's strong augmentation. Two uniform draws for the whole batch: colour jitter (``color_jitter``) when the
    first exceeds ``jitter_p`` (80 % of batches), a Gaussian blur (``gaussian_blur``, sigma uniform in [0.15, 1.15])
    when the second exceeds 0.5 (and ``blur``). ``per_image``: one call per image, as DACS augments its mixed images
    (each image its own jitter order and sigma); else one call for the batch, as MIC augments its masked images (one
    order, one sigma; jitter factors still per image).

    float [B, 3, H, W] in [0, 1] -> the same.
    """
    jitter_draw, blur_draw = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
    out = []
    for group in (x.split(1) if per_image else (x,)):
        if jitter_draw > jitter_p:
            group = color_jitter(group, generator)
        if blur and blur_draw > BLUR_P:
            low, high = BLUR_SIGMA
            group = gaussian_blur(group, low + (high - low) * torch.rand(1, generator=generator).item())
        out.append(group)
    return torch.cat(out)


def block_masks(shape: tuple[int, int, int], ratio: float, block: int, generator: torch.Generator) -> torch.Tensor:
    """MIC's masks: per image a grid of round(H / block) x round(W / block) cells, each kept where a uniform draw
    exceeds ``ratio`` (so a share ``ratio`` hidden), resized to H x W by nearest neighbour.

    shape (B, H, W) -> float [B, 1, H, W]: 0 where hidden, 1 where kept.
    """
    batch, height, width = shape
    cells = torch.rand(batch, 1, max(1, round(height / block)), max(1, round(width / block)), generator=generator)
    return nnf.interpolate((cells > ratio).float(), size=(height, width), mode="nearest")


@contextmanager
def statistics_kept(module: nn.Module) -> Iterator[None]:
    """Within the block, train-mode BatchNorm layers of ``module`` still normalize with the batch's statistics but
    leave their running statistics (and batch counter) as they are: for auxiliary inputs such as MIC's masked
    images, whose statistics are not the target's, and for a train-mode teacher."""
    norms = batch_norms(module)
    saved = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False  # in train mode: batch statistics, nothing recorded (timm's norms alike)
    try:
        yield
    finally:
        for m, track in zip(norms, saved):
            m.track_running_stats = track
