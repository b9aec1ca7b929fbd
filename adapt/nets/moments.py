"""Moment exchange (MoEx; Li et al., "On Feature Normalization and Data Augmentation", CVPR 2021) inside F.

Positional normalization (PONO) takes, at every position of a feature map, the mean and standard deviation over its
channels. MoEx replaces those of image a by those of a partner image b in an early feature map of the encoder:
``(f_a - mu_a) / sigma_a * sigma_b + mu_b``, so that the rest of the network sees a's content with b's first two
moments (in an early layer, much of an image's style). ``moment_exchange`` does this for one forward pass of F, with
a forward hook on one module of the encoder that is removed when the block ends (the official code,
Boyiliee/MoEx ``moex``: float32, unbiased variance, epsilon 1e-5 added to it).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal

import torch
from segmentation_models_pytorch.encoders.efficientnet import EfficientNetEncoder
from segmentation_models_pytorch.encoders.resnet import ResNetEncoder
from segmentation_models_pytorch.encoders.timm_efficientnet import EfficientNetBaseEncoder
from torch import nn

EPS = 1e-5  # MoEx's epsilon, added to the variance
Layer = Literal["stem", "C2"]
LAYERS = ("stem", "C2")


def pono_moments(features: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """PONO's moments of ``features`` float [B, C, H, W]: (mean over C, sqrt(unbiased variance over C + eps)),
    each float32 [B, 1, H, W]."""
    x = features.float()
    return x.mean(1, keepdim=True), x.var(1, keepdim=True).add(eps).sqrt()


def exchange_moments(features: torch.Tensor, partner: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Each image's features with the PONO moments of its partner: ``out[i] = (f[i] - mu[i]) / sigma[i] *
    sigma[partner[i]] + mu[partner[i]]``, computed in float32 and returned in ``features``' dtype.

    features float [B, C, H, W]; partner int64 [B], indices into the batch (a permutation, or any map; i -> i
    leaves image i as it is, up to rounding). Gradients flow into both images' features, as in MoEx's code.
    """
    mean, std = pono_moments(features, eps)
    index = partner.to(features.device)
    scale = std[index] / std
    return (features.float() * scale + (mean[index] - mean * scale)).to(features.dtype)


def early_stage(encoder: nn.Module | None, layer: Layer = "stem") -> nn.Module | None:
    """The encoder module whose output MoEx exchanges, or None for an encoder without a known early stage.

    ``stem``: ResNet (smp ``resnet*`` / ``resnext*``): after conv1, BatchNorm, ReLU and max pooling (stride 4),
    MoEx's own choice for ResNets on ImageNet; EfficientNet (smp ``timm-efficientnet-*``,
    ``timm-tf_efficientnet_lite*``, ``efficientnet-*``): after the stem convolution, BatchNorm and activation
    (stride 2). ``C2``: the output of the first stage at stride 4 (ResNet ``layer1``; EfficientNet the blocks that
    reach stride 4, smp's second feature level).
    """
    if isinstance(encoder, ResNetEncoder):
        return {"stem": encoder.maxpool, "C2": encoder.layer1}.get(layer)
    if isinstance(encoder, EfficientNetBaseEncoder):  # smp's forward: conv_stem, bn1 (with act), blocks[0:2] -> C2
        return {"stem": encoder.bn1, "C2": encoder.blocks[1]}.get(layer)
    if isinstance(encoder, EfficientNetEncoder):  # lukemelas' EfficientNet: _conv_stem, _bn0, _swish, _blocks
        return {"stem": encoder._swish, "C2": encoder._blocks[encoder._out_indexes[0]]}.get(layer)
    return None


@contextmanager
def moment_exchange(encoder: nn.Module, partner: torch.Tensor, layer: Layer = "stem",
                    eps: float = EPS) -> Iterator[None]:
    """Within the block, every forward pass of ``encoder`` exchanges the PONO moments of its ``layer`` output
    (``early_stage``) between each image and its ``partner`` (int64 [B]); outside it, the encoder is as before.
    Raises ValueError for an encoder without a known early stage (tasks check it when they are built)."""
    module = early_stage(encoder, layer)
    if module is None:
        raise ValueError(f"MoEx: no known {layer!r} stage in {type(encoder).__name__}")
    handle = module.register_forward_hook(lambda _module, _inputs, out: exchange_moments(out, partner, eps))
    try:
        yield
    finally:
        handle.remove()
