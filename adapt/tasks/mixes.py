"""The mixing choices of F's training: ClassMix (DACS), CutMix (Yun et al. 2019), mixup (Zhang et al. 2018) and
MoEx (Li et al. 2021), as plain functions that build a ``Mixed`` batch and its loss.

Two uses. ``SegmentationTask`` (``mixing``: source-only training) mixes each source image with a partner from the
same batch (``mix_within``, a permutation drawn by the step's generator). ``SelfTrainingTask`` (``mixing``: the
pseudo-labelled term) mixes the source batch into the target batch, pair i with pair i (``mix_into_target``): the
source images bring their labels (weight 1), the target images the teacher's pseudo-labels and their weights.

ClassMix and CutMix paste pixels, so each pixel keeps one label and one weight (``Mixed.labels``, ``weight``);
mixup and MoEx blend two images, so each pixel carries two label sets and the coefficient ``lam`` of the first:
its loss is ``lam * CE(labels) + (1 - lam) * CE(partner_labels)`` (``two_label_cross_entropy``), still one mean over
the global batch's pixels. Images are float [N, 3, H, W] in [0, 1], labels int64 [N, H, W] (``IGNORE_INDEX`` 255
where no loss applies), pixel weights float [N, H, W]; every random draw comes from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from adapt.data.labels import IGNORE_INDEX
from adapt.data.sampling import MIX, derive_seed, global_seed
from adapt.errors import ConfigError
from adapt.losses import pixel_cross_entropy
from adapt.nets.moments import LAYERS, early_stage, moment_exchange
from adapt.tasks.mixing import classmix_masks, every_pixel_counted, mix

SOURCE_MIXINGS = ("cutmix", "mixup", "moex")  # SegmentationTask's choices (null: off)
TARGET_MIXINGS = ("classmix", "cutmix", "mixup", "moex")  # SelfTrainingTask's choices (null: the target alone)
PASTING = ("classmix", "cutmix")  # one label per pixel: the only choices with HRDA's multi-resolution loss


class Mixed(NamedTuple):
    """A batch F learns from. ``labels`` / ``weight`` (None: every pixel weighs 1) are the only labels of a pasted
    batch; mixup and MoEx add ``partner_labels`` / ``partner_weight`` and ``lam`` (float [N], the share of
    ``labels``); MoEx adds ``partner`` (int64 [N]: the index in this batch of the image whose moments each image
    takes in F's early layer, ``adapt.nets.moments``)."""

    image: torch.Tensor
    labels: torch.Tensor
    weight: torch.Tensor | None = None
    partner_labels: torch.Tensor | None = None
    partner_weight: torch.Tensor | None = None
    lam: torch.Tensor | None = None
    partner: torch.Tensor | None = None


def check_mixing(mixing: str | None, allowed: tuple[str, ...], segmenter: nn.Module, alpha: float,
                 moex_lambda: float, moex_layer: str, compiled: bool = False, multi_resolution: bool = False) -> None:
    """One-line ConfigError for a choice ``mixing`` or a setting that cannot work with this F (``model.init_args``
    keys)."""
    key = "model.init_args"
    if mixing is not None and mixing not in allowed:
        raise ConfigError(f"{key}.mixing: {mixing!r}; choose {', '.join(allowed)} or null")
    if not alpha > 0:
        raise ConfigError(f"{key}.mixing_alpha: {alpha}; give the Beta(alpha, alpha) parameter > 0 (1: uniform)")
    if not 0 <= moex_lambda <= 1:
        raise ConfigError(f"{key}.moex_lambda: {moex_lambda}; give the content label's share in [0, 1] (MoEx: 0.9)")
    if moex_layer not in LAYERS:
        raise ConfigError(f"{key}.moex_layer: {moex_layer!r}; choose {' or '.join(LAYERS)}")
    if multi_resolution and mixing not in (None, *PASTING):
        raise ConfigError(f"{key}.mixing: {mixing!r} blends two label sets, which HRDA's multi-resolution loss does "
                          f"not take; choose {' or '.join(PASTING)} (or multi_resolution: null)")
    if mixing == "moex" and early_stage(getattr(segmenter.net, "encoder", None), moex_layer) is None:
        raise ConfigError(f"{key}.mixing: moex needs an encoder with a known early stage (smp resnet*, resnext*, "
                          "efficientnet-*, timm-efficientnet-*, timm-tf_efficientnet_lite*); choose another mixing")
    if mixing == "moex" and compiled:
        raise ConfigError(f"{key}.mixing: moex exchanges moments with a hook that a compiled F would not see; "
                          "set compile: false")


def step_generator(rank: int, step: int) -> torch.Generator:
    """The generator of a training step's random draws, keyed to (the run's seed, process, optimizer step), as
    ``SelfTrainingTask`` keys its own: a run draws the same mixes again."""
    return torch.Generator().manual_seed(derive_seed(MIX, global_seed(), rank, step))


def beta_draws(alpha: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """n draws of Beta(alpha, alpha) (alpha 1: uniform on [0, 1]) -> float32 [n], from numpy's Beta sampler seeded
    by one draw of ``generator``."""
    seed = int(torch.randint(2 ** 62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n)).float()


def cutmix_boxes(lam: torch.Tensor, size: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """CutMix's boxes: for each lam (float [N], the share of the image kept), a box of
    ``int(H * sqrt(1 - lam))`` x ``int(W * sqrt(1 - lam))`` px centred on a uniform pixel and clipped to the image
    (its area is ``1 - lam`` of the image up to rounding and clipping) -> int64 [N, 4] (top, left, bottom, right),
    rows and columns ``top:bottom``, ``left:right``."""
    height, width = size
    side = (1 - lam.double()).clamp(0, 1).sqrt()
    cut_h, cut_w = (height * side).long(), (width * side).long()
    centre_y = torch.randint(height, (len(lam),), generator=generator)
    centre_x = torch.randint(width, (len(lam),), generator=generator)
    top, left = centre_y - cut_h // 2, centre_x - cut_w // 2
    return torch.stack([top.clamp(0, height), left.clamp(0, width), (top + cut_h).clamp(0, height),
                        (left + cut_w).clamp(0, width)], 1)


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """int64 [N, 4] boxes (``cutmix_boxes``) -> bool [N, H, W], True inside each box."""
    rows, cols = torch.arange(size[0]), torch.arange(size[1])
    top, left, bottom, right = (b.view(-1, 1) for b in boxes.unbind(1))
    return ((rows >= top) & (rows < bottom))[:, :, None] & ((cols >= left) & (cols < right))[:, None, :]


def _cutmix(n: int, size: tuple[int, int], alpha: float, generator: torch.Generator) -> torch.Tensor:
    """bool [n, H, W]: CutMix boxes with lam ~ Beta(alpha, alpha), True where the partner's pixels go."""
    return box_masks(cutmix_boxes(beta_draws(alpha, n, generator), size, generator), size)


def mix_within(mixing: str, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, alpha: float = 1.0,
               moex_lambda: float = 0.9) -> Mixed:
    """Source-only mixing: each image i of (x, y) with partner ``perm[i]`` of the same batch (``perm`` a random
    permutation). ``cutmix``: the partner's pixels and labels in a box of share 1 - lam; ``mixup``: ``lam * x +
    (1 - lam) * x[perm]`` with labels y and y[perm]; ``moex``: x itself, its early features with the partner's
    moments, labels y (share ``moex_lambda``) and y[perm]. lam ~ Beta(alpha, alpha) per image."""
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator).to(x.device)
    if mixing == "cutmix":
        inside = _cutmix(n, x.shape[-2:], alpha, generator).to(x.device)
        return Mixed(mix(inside, x[perm], x), mix(inside, y[perm], y))
    if mixing == "mixup":
        lam = beta_draws(alpha, n, generator).to(x.device)
        return Mixed(_blend(lam, x, x[perm]), y, None, y[perm], None, lam)
    if mixing == "moex":
        return Mixed(x, y, None, y[perm], None, torch.full((n,), moex_lambda, device=x.device), perm)
    raise ValueError(f"mixing {mixing!r}")


def mix_into_target(mixing: str | None, x_s: torch.Tensor, y_s: torch.Tensor, x_t: torch.Tensor,
                    pseudo_t: torch.Tensor, weight_t: torch.Tensor, generator: torch.Generator, alpha: float = 1.0,
                    moex_lambda: float = 0.9) -> Mixed:
    """Self-training's pseudo-labelled batch from source pair i and target image i (source pixels weigh 1).

    ``classmix``: ceil(n / 2) of the source batch's classes pasted onto the target image (``classmix_masks``);
    ``cutmix``: a box of share 1 - lam (lam ~ Beta(alpha, alpha): the target's share) pasted from the source;
    ``mixup``: ``lam * x_s + (1 - lam) * x_t``, labels y_s (share lam) and the pseudo-labels (1 - lam, times their
    weights); ``moex``: x_s and x_t as one batch of 2B images, each pair exchanging its early-layer moments both
    ways: the source image with the target's moments (a feature-level translation to the target's style, learnt
    from its own labels at share ``moex_lambda``) and the target image with the source's (its pseudo-labels at
    share ``moex_lambda``), the partner's labels at 1 - ``moex_lambda``; null: the target images alone.
    """
    ones = torch.ones_like(weight_t)
    if mixing in PASTING:
        masks = (classmix_masks(y_s, generator) if mixing == "classmix"
                 else _cutmix(len(x_s), x_s.shape[-2:], alpha, generator).to(x_s.device))
        return Mixed(mix(masks, x_s, x_t), mix(masks, y_s, pseudo_t), mix(masks, ones, weight_t))
    if mixing == "mixup":
        lam = beta_draws(alpha, len(x_s), generator).to(x_s.device)
        return Mixed(_blend(lam, x_s, x_t), y_s, ones, pseudo_t, weight_t, lam)
    if mixing == "moex":
        n = len(x_s)
        partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(x_s.device)
        lam = torch.full((2 * n,), moex_lambda, device=x_s.device)
        return Mixed(torch.cat([x_s, x_t]), torch.cat([y_s, pseudo_t]), torch.cat([ones, weight_t]),
                     torch.cat([pseudo_t, y_s]), torch.cat([weight_t, ones]), lam, partner)
    return Mixed(x_t, pseudo_t, weight_t)


def _blend(lam: torch.Tensor, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
    """mixup's images: ``lam * x_a + (1 - lam) * x_b``, lam float [N] per image."""
    lam = lam.to(x_a.dtype).view(-1, 1, 1, 1)
    return lam * x_a + (1 - lam) * x_b


def two_label_cross_entropy(logits: torch.Tensor, mixed: Mixed,
                            every_pixel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of mixup's / MoEx's loss for ``adapt.losses.global_batch_mean``: per image i, ``lam_i *
    CE(labels) * weight + (1 - lam_i) * CE(partner_labels) * partner_weight`` summed over its pixels; the count
    ``lam_i * (labelled pixels of labels) + (1 - lam_i) * (those of partner_labels)``, summed over images (float).
    ``every_pixel`` (``loss_average: all``): ignored pixels count too, at weight 0 (``every_pixel_counted``), so the
    count is every pixel of the batch and the mean is ``lam CE(y_a) + (1 - lam) CE(y_b)`` averaged over pixels.

    logits float [N, C, H, W] -> (float scalar with grad, float scalar).
    """
    share = mixed.lam.float().view(-1, 1, 1)
    total, count = 0, 0
    for labels, weight, part in ((mixed.labels, mixed.weight, share), (mixed.partner_labels, mixed.partner_weight,
                                                                        1 - share)):
        if every_pixel:
            labels, weight = every_pixel_counted(labels, weight)
        weight = part.expand(labels.shape) if weight is None else part * weight
        total = total + pixel_cross_entropy(logits, labels, weight)[0]
        count = count + (part * (labels != IGNORE_INDEX)).sum()
    return total, count


Mean = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def mixed_loss(segmenter: nn.Module, mixed: Mixed, moex_layer: str, mean: Mean,
               every_pixel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss to backpropagate, value): F's cross-entropy on a ``Mixed`` batch, one pass (with MoEx's exchange at
    ``moex_layer`` when the batch names partners), the mean over the global batch by ``mean``
    (``adapt.losses.global_batch_mean`` bound to the run). One label set: ``pixel_cross_entropy`` as F's plain
    loss; two: ``two_label_cross_entropy``."""
    exchange = (nullcontext() if mixed.partner is None
                else moment_exchange(segmenter.net.encoder, mixed.partner, moex_layer))
    with exchange:
        logits = segmenter(mixed.image)
    if mixed.lam is None:
        labels, weight = mixed.labels, mixed.weight
        if every_pixel:
            labels, weight = every_pixel_counted(labels, weight)
        return mean(*pixel_cross_entropy(logits, labels, weight))
    return mean(*two_label_cross_entropy(logits, mixed, every_pixel))
