"""The translator T: CycleGAN's ResNet generator and weight init (discriminator and image pool: ``discriminator``).

The generator and the discriminator take images in [0, 1] (what the datasets give and what the segmenter takes) and work in [-1, 1]
inside (``2x - 1`` in, ``(tanh + 1) / 2`` out), so ``segmenter(generator(x_t))`` needs no conversion.

- ``ResnetGenerator(x)``: float [B, 3, H, W] in [0, 1] -> float [B, 3, H, W] in [0, 1]; H and W multiples of
  ``generator.multiple`` (``2 ** n_downsampling``); ``translate_padded`` handles any size.

Architectures follow Zhu et al. 2017 (CycleGAN), appendix 7.2, and its reference implementation.
"""

from __future__ import annotations

import torch
from torch import nn

from adapt.inference import pad_to_multiple


def to_tanh_range(x: torch.Tensor) -> torch.Tensor:
    return x * 2 - 1


class ResnetBlock(nn.Module):
    """x + (reflect-pad, 3x3 conv, InstanceNorm, ReLU, reflect-pad, 3x3 conv, InstanceNorm)(x); shape-preserving.

    Needs H, W >= 2 (reflection padding of 1).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator ("resnet_9blocks" with the defaults), no dropout, instance norm.

    c7s1-ngf, ``n_downsampling`` x (3x3 stride-2 conv, channels doubling), ``n_blocks`` residual blocks,
    ``n_downsampling`` x (3x3 stride-2 transposed conv, channels halving), c7s1-3 + tanh. Convolutions carry biases
    (InstanceNorm2d here has no affine parameters). Weights are initialized by ``init_weights``.

    ``forward``: float [B, 3, H, W] in [0, 1] -> float [B, 3, H, W] in [0, 1]. H and W must be multiples of
    ``multiple = 2 ** n_downsampling`` (4 by default) and at least ``2 * multiple`` (the residual blocks
    reflect-pad the bottleneck by 1); use ``translate_padded`` for other sizes.

    Args:
        ngf: channels of the first layer (64 in the paper).
        n_blocks: residual blocks (9 for 256x256 training images, 6 for 128x128 in the paper).
        n_downsampling: stride-2 convolutions down (and transposed ones up).
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 9, n_downsampling: int = 2) -> None:
        super().__init__()
        self.multiple = 2**n_downsampling
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        channels = ngf
        for _ in range(n_downsampling):
            layers += [nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(channels * 2),
                       nn.ReLU(True)]
            channels *= 2
        layers += [ResnetBlock(channels) for _ in range(n_blocks)]
        for _ in range(n_downsampling):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(channels // 2), nn.ReLU(True)]
            channels //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(channels, 3, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(to_tanh_range(x)) + 1) / 2


def translate_padded(generator: ResnetGenerator, x: torch.Tensor) -> torch.Tensor:
    """Translate an image of any size: pad right/bottom to a multiple of ``generator.multiple`` (and at least twice
    it; reflect, or replicate where the image is too small to reflect), run, crop back.

    float [B, 3, H, W] in [0, 1] -> float [B, 3, H, W] in [0, 1].
    """
    height, width = x.shape[-2:]
    return generator(pad_to_multiple(x, generator.multiple, minimum=2, mode="reflect"))[..., :height, :width]


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """CycleGAN's "normal" initialization, in place: conv / transposed conv / linear weights ~ N(0, gain), their
    biases 0; normalization layers with affine parameters: weight ~ N(1, gain), bias 0. Returns ``net``."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
    for module in net.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            nn.init.normal_(module.weight, 0.0, gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, norms):
            if getattr(module, "weight", None) is not None:
                nn.init.normal_(module.weight, 1.0, gain)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    return net
