"""HRDA's training loss (Hoyer et al. 2022) as a plain function: the fused and the detail logits of a
multi-resolution F (``adapt.nets.hrda``) against one set of labels."""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as nnf

from adapt.nets.hrda import MultiResolutionOutput

Mean = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None,
                        ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the per-pixel cross-entropy, times ``weight`` where given; count of labelled pixels).

    logits float [B, C, H, W]; labels int64 [B, H, W] (``ignore_index``: no loss); weight float [B, H, W] or None.
    """
    ce = nnf.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    return (ce if weight is None else ce * weight).sum(), (labels != ignore_index).sum()


def multi_resolution_loss(segmenter: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None,
                          generator: torch.Generator, detail_weight: float, mean: Mean, ignore_index: int = 255,
                          features: bool = False) -> tuple[torch.Tensor, torch.Tensor, MultiResolutionOutput]:
    """HRDA's loss of ``segmenter`` (with ``multi_resolution``) on the crop ``x`` float [B, 3, H, W] against ``y``
    int64 [B, H, W] (pixel weights ``weight`` [B, H, W] or None): a detail box drawn by ``generator``, then
    ``(1 - detail_weight) * CE(fused, y) + detail_weight * CE(detail, y in the box)`` (HRDA's ``HRDAHead.losses``
    with ``hr_loss_weight``), each term the mean over the global batch's labelled pixels by ``mean``
    (``SegmentationTask.global_batch_mean``: (sum, count) -> (loss to backpropagate, value)).

    Returns (loss, value, the pass: ``MultiResolutionOutput``, encoder features of the context if ``features``).
    """
    hrda = segmenter.multi_resolution
    top, left = hrda.sample_box(x.shape[-2:], generator)
    passed = hrda.forward_train(segmenter, x, (top, left), features)
    h, w = hrda.detail_crop
    box = (slice(None), slice(top, top + h), slice(left, left + w))
    loss_f, value_f = mean(*pixel_cross_entropy(passed.fused, y, weight, ignore_index))
    loss_d, value_d = mean(*pixel_cross_entropy(passed.detail, y[box], None if weight is None else weight[box],
                                                ignore_index))
    return ((1 - detail_weight) * loss_f + detail_weight * loss_d, (1 - detail_weight) * value_f
            + detail_weight * value_d, passed)
