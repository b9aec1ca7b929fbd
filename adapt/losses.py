"""Loss terms of the translator T (CycleGAN, Zhu et al. 2017; CyCADA, Hoffman et al. 2018) as plain functions.

Each returns a float scalar (a 0-dim tensor) that carries the graph; weighting (lambda_cycle, lambda_identity,
lambda_semantic) and all optimizer calls stay in the task's ``training_step``. With G: X -> Y, its discriminator
D_Y and the reverse generator R: Y -> X, CycleGAN's generator objective is
``lsgan_loss(D_Y(G(x)), True) + lambda_cycle * cycle_loss(R(G(x)), x) + lambda_identity * identity_loss(G(y), y)``
(and the same with the roles swapped); D_Y minimizes ``discriminator_loss(D_Y(y), D_Y(pool.query(G(x))))``.

The segmenter's losses: ``pixel_cross_entropy`` (the one cross-entropy of F's training, per pixel, optionally
weighted, summed) and ``global_batch_mean`` (that sum divided by the labelled pixels of the global batch, for DDP);
the entropy (MinEnt, TENT, validators) and DAFormer's feature distance.

Adversarial alignment (``adapt.tasks.adversarial``): ``self_information`` (AdvEnt's discriminator input, from the same
-p log p terms as ``entropy``), ``domain_bce`` (F's term: target scores against ``SOURCE_LABEL``) and
``discriminator_bce`` (D's objective).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.nn import functional as nnf

from adapt.data.labels import IGNORE_INDEX

EPS = 1e-12  # probabilities below it count as 0 in log p
SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0  # the discriminator's domain labels (AdvEnt's: source 0, target 1)


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                        weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the per-pixel cross-entropy, times ``weight`` where given; count of labelled pixels), for
    ``global_batch_mean``.

    logits float [B, C, H, W] (the softmax taken in float32 or better); labels int64 [B, H, W] of train indices,
    ``IGNORE_INDEX`` (255) where no loss applies; weight float [B, H, W] or None. Returns a float scalar with grad
    and an int64 scalar.
    """
    if weight is None:
        total = nnf.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
    else:
        total = (nnf.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
                 * weight).sum()
    return total, (labels != IGNORE_INDEX).sum()


def global_batch_mean(total: torch.Tensor, count: torch.Tensor, world_size: int = 1,
                      sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean over the labelled pixels of the global batch (all W processes), as (loss to backpropagate, value).

    ``total``: this process's summed loss (float scalar with grad); ``count``: its labelled pixels (int scalar);
    ``sum_over_processes``: sums a float [2] tensor over the processes (needed when ``world_size`` > 1). DDP
    averages gradients over the W processes, so the loss to backpropagate is ``W * total / N`` with ``N`` the global
    pixel count: its averaged gradient is that of one process holding the whole batch, even when processes hold
    different numbers of labelled pixels. The value (detached) is ``sum(total) / N``.
    """
    sums = torch.stack([total.detach(), count.to(total.dtype)])
    if world_size > 1:
        sums = sum_over_processes(sums)
    n = sums[1].clamp(min=1)
    return total * world_size / n, sums[0] / n


def lsgan_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss (Mao et al. 2017), CycleGAN's L_GAN: mean((scores - target)^2), target 1 for real,
    0 for fake.

    The generator's adversarial term is ``lsgan_loss(D(G(x)), True)``.

    Args:
        scores: raw discriminator outputs, float [B, 1, H', W'] (any shape).
        real: whether the scores should read "real".
    """
    return nnf.mse_loss(scores, torch.full_like(scores, 1.0 if real else 0.0))


def discriminator_loss(d_real_scores: torch.Tensor, d_fake_scores: torch.Tensor) -> torch.Tensor:
    """CycleGAN's discriminator objective, halved to slow D relative to G:
    0.5 * (lsgan_loss(real, True) + lsgan_loss(fake, False)).

    Args:
        d_real_scores: D on real images of its domain, float [B, 1, H', W'].
        d_fake_scores: D on (pooled, detached) translated images, float [B, 1, H', W'].
    """
    return 0.5 * (lsgan_loss(d_real_scores, True) + lsgan_loss(d_fake_scores, False))


def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Cycle-consistency loss L_cyc: mean |R(G(x)) - x| (L1 averaged over all elements), measured on the
    [-1, 1] scale on which CycleGAN computes it (twice the [0, 1] difference), so that its lambda_cycle = 10
    carries over unchanged.

    Args:
        reconstructed: R(G(x)), float [B, 3, H, W] in [0, 1].
        original: x, float [B, 3, H, W] in [0, 1].
    """
    return 2 * nnf.l1_loss(reconstructed, original)


def identity_loss(same: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Identity-mapping loss L_identity: mean |G(y) - y| for y already in G's output domain (keeps colours),
    on the [-1, 1] scale like ``cycle_loss``.

    Args:
        same: G(y), float [B, 3, H, W] in [0, 1].
        original: y, float [B, 3, H, W] in [0, 1].
    """
    return 2 * nnf.l1_loss(same, original)


def semantic_consistency_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """CyCADA's semantic-consistency loss L_sem: cross-entropy of the frozen segmenter's logits on a translated
    image against labels for the untranslated one (its argmax predictions ``segmenter(x).argmax(1)``, or
    ground truth where there is some), averaged over the labelled pixels.

    Args:
        logits: segmenter(T(x)), float [B, C, H, W].
        labels: int64 [B, H, W] in [0, C) or ``ignore_index``.
        ignore_index: label of pixels that count nowhere.

    Returns 0 (with a graph) when every pixel is ignored, instead of cross-entropy's NaN.
    """
    total = nnf.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


def entropy(scores: torch.Tensor, dim: int = 1, logits: bool = True) -> torch.Tensor:
    """Shannon entropy in nats of each distribution along ``dim``: the one entropy of the package (MinEnt's
    per-pixel map, Vu et al., ADVENT, CVPR 2019; TENT's objective; the label-free validators).

    Args:
        scores: logits (``logits=True``; softmax taken in float32 or better) or probabilities (``logits=False``;
            0 log 0 counts as 0), e.g. float [B, C, H, W] with ``dim=1`` or [N, C] with ``dim=-1``.
    Returns: ``scores`` without ``dim``, in [0, log C]; minimizing its mean on target images sharpens predictions.
    """
    return information_terms(scores, dim, logits).sum(dim)


def information_terms(scores: torch.Tensor, dim: int = 1, logits: bool = True) -> torch.Tensor:
    """The terms -p log p (nats) of each class, whose sum over ``dim`` is ``entropy``: the one place of the package
    that computes them. ``scores`` as in ``entropy``; returns its shape, each term in [0, 1 / e]."""
    if logits:
        log_p = nnf.log_softmax(scores if scores.dtype == torch.float64 else scores.float(), dim=dim)
        return -(log_p.exp() * log_p)
    return -(scores * scores.clamp_min(EPS).log())


def self_information(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """AdvEnt's weighted self-information map (Vu et al., CVPR 2019, eq. 5; ADVENT's ``prob_2_entropy``): per class,
    ``I = -p log2 p / log2 C`` of F's softmax p over C classes (= -p ln p / ln C), what its discriminator reads.

    logits float [B, C, H, W] (at the input's resolution: AdvEnt upsamples before the softmax; the softmax taken
    in float32 or better) -> float [B, C, H, W], each value in [0, 1 / (e ln C)]; summed over C, the entropy
    normalized to [0, 1]. Differentiable: F's adversarial gradient flows through it.
    """
    return information_terms(logits, dim) / math.log(logits.shape[dim])


def domain_bce(scores: torch.Tensor, label: float) -> torch.Tensor:
    """Binary cross-entropy of raw discriminator scores against one domain label for every cell (ADVENT's
    ``bce_loss``): the mean over all cells of ``-(y log sigmoid(s) + (1 - y) log(1 - sigmoid(s)))``.

    scores float [B, 1, h, w] (any shape; computed in float32 or better); label ``SOURCE_LABEL`` (0) or
    ``TARGET_LABEL`` (1). F's adversarial term is ``domain_bce(D(target input), SOURCE_LABEL)``: F learns to make
    the target look like the source to D. Under DDP every process holds as many cells, so this local mean,
    averaged by DDP, is the global batch's mean.
    """
    scores = scores if scores.dtype == torch.float64 else scores.float()
    return nnf.binary_cross_entropy_with_logits(scores, torch.full_like(scores, label))


def discriminator_bce(scores_s: torch.Tensor, scores_t: torch.Tensor) -> torch.Tensor:
    """The discriminator's objective as ADVENT trains it, each half a mean over its domain's cells:
    ``(domain_bce(scores_s, SOURCE_LABEL) + domain_bce(scores_t, TARGET_LABEL)) / 2``.

    scores_s, scores_t: D on the (detached) source and target inputs, float [B, 1, h, w] each.
    """
    return (domain_bce(scores_s, SOURCE_LABEL) + domain_bce(scores_t, TARGET_LABEL)) / 2


def downscale_labels(labels: torch.Tensor, size: tuple[int, int], num_classes: int, min_share: float = 0.75,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels at a feature map's resolution (DAFormer's feature-distance masks): each cell takes the class that
    covers at least ``min_share`` of its pixels, ``ignore_index`` when no class does (ignored pixels count
    against every class).

    labels int64 [B, H, W] -> int64 [B, h, w]; H and W multiples of h and w.
    """
    valid = labels != ignore_index
    onehot = nnf.one_hot(torch.where(valid, labels, num_classes), num_classes + 1).permute(0, 3, 1, 2).float()
    shares = nnf.adaptive_avg_pool2d(onehot[:, :num_classes], size)
    share, label = shares.max(1)
    return torch.where(share >= min_share, label, torch.full_like(label, ignore_index))


def feature_distance(features: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
    """DAFormer's ImageNet feature distance: the L2 norm over channels of ``features - reference`` at the cells
    where ``mask`` holds, as (sum over those cells, their count); the caller divides (over the global batch).

    features float [B, D, h, w] (with grad), reference the same (a frozen ImageNet encoder's; no grad flows into
    it), mask bool [B, h, w] (thing-class cells).
    """
    distance = torch.linalg.vector_norm(features.float() - reference.detach().float(), dim=1)
    return (distance * mask).sum(), mask.sum()
