"""Optimizer groups and the learning-rate schedule of F's training, as DAFormer / HRDA / MIC (mmcv) define them.

Plain functions on modules and numbers; ``SegmentationTask.configure_optimizers`` (and every task built on it) calls
them. mmcv's rules, for reference: a parameter takes the first matching ``custom_keys`` entry, the longest key first
(DAFormer: ``head`` lr x 10 before ``norm`` decay x 0), so only the encoder's normalisation layers lose the decay;
``poly`` is ``(1 - iter / max_iters) ** power``; the linear warmup multiplies it by
``1 - (1 - iter / warmup_iters) * (1 - warmup_ratio)``.
"""

from __future__ import annotations

import torch
from torch import nn

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)


def parameter_groups(model: nn.Module, encoder: nn.Module, head_lr_factor: float, encoder_lr_factor: float,
                     weight_decay: float, encoder_norm_decay: bool = True
                     ) -> list[tuple[list[nn.Parameter], float, float]]:
    """(parameters, lr factor, weight decay) of each optimizer group, trained parameters only:

    0. every parameter of ``model`` outside ``encoder`` (decoder, classifier, HRDA's attention head) at
       ``head_lr_factor``;
    1. the encoder's at ``encoder_lr_factor`` (an empty list when it is frozen);
    2. only with ``encoder_norm_decay`` false: the encoder's normalisation layers (weights and biases of
       ``NORM_LAYERS``), at ``encoder_lr_factor`` and no weight decay, taken out of group 1.
    """
    inside = {id(p) for p in encoder.parameters()}
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in inside]
    trained = [p for p in encoder.parameters() if p.requires_grad]
    groups = [(head, head_lr_factor, weight_decay)]
    if encoder_norm_decay:
        return groups + [(trained, encoder_lr_factor, weight_decay)]
    norms = {id(p) for m in encoder.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    return groups + [([p for p in trained if id(p) not in norms], encoder_lr_factor, weight_decay),
                     ([p for p in trained if id(p) in norms], encoder_lr_factor, 0.0)]


def lr_factor(step: int, total: int, warmup_steps: int = 0, schedule: str = "poly", power: float = 0.9,
              warmup_ratio: float = 1e-6) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a share of the peak ``lr``.

    ``schedule`` ``poly``: ``(1 - min(step, total) / total) ** power``; ``constant``: 1. Over the first
    ``warmup_steps`` steps, times mmcv's linear warmup ``1 - (1 - step / warmup_steps) * (1 - warmup_ratio)``:
    ``warmup_ratio`` at step 0, the schedule's own value from step ``warmup_steps`` on.
    """
    regular = (1 - min(step, total) / total) ** power if schedule == "poly" else 1.0
    if step >= warmup_steps:
        return regular
    return regular * (1 - (1 - step / warmup_steps) * (1 - warmup_ratio))



def lr_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup_steps: int = 0, schedule: str = "poly",
                 power: float = 0.9) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step scheduler of ``lr_factor`` over ``total`` steps (torch's ``PolynomialLR`` without a warmup: the
    same values, and the state that checkpoints of earlier versions hold)."""
    if not warmup_steps:
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             lambda step: lr_factor(step, total, warmup_steps, schedule, power))
