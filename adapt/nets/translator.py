"""The translator T: CycleGAN's ResNet generator, 70x70 PatchGAN discriminator, weight init and image pool.

Both networks take images in [0, 1] (what the datasets give and what the segmenter takes) and work in [-1, 1]
inside (``2x - 1`` in, ``(tanh + 1) / 2`` out), so ``segmenter(generator(x_t))`` needs no conversion.

- ``ResnetGenerator(x)``: float [B, 3, H, W] in [0, 1] -> float [B, 3, H, W] in [0, 1]; H and W multiples of
  ``generator.multiple`` (``2 ** n_downsampling``); ``translate_padded`` handles any size.
- ``PatchDiscriminator(x)``: float [B, 3, H, W] in [0, 1] -> raw (LSGAN, no sigmoid) scores float [B, 1, H', W'].
- ``ImagePool``: the history of generated images the discriminator is updated with (Shrivastava et al. 2017).

Architectures follow Zhu et al. 2017 (CycleGAN), appendix 7.2, and its reference implementation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as nnf


def _to_tanh_range(x: torch.Tensor) -> torch.Tensor:
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
        return (self.net(_to_tanh_range(x)) + 1) / 2


def translate_padded(generator: ResnetGenerator, x: torch.Tensor) -> torch.Tensor:
    """Translate an image of any size: pad right/bottom to a multiple of ``generator.multiple`` (and at least twice
    it; reflect, or replicate where the image is too small to reflect), run, crop back.

    float [B, 3, H, W] in [0, 1] -> float [B, 3, H, W] in [0, 1].
    """
    height, width = x.shape[-2:]
    multiple = generator.multiple
    pad_h = max(-(-height // multiple), 2) * multiple - height
    pad_w = max(-(-width // multiple), 2) * multiple - width
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = nnf.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return generator(x)[..., :height, :width]


class PatchDiscriminator(nn.Module):
    """CycleGAN's PatchGAN ("basic", 70x70 receptive field with ``n_layers=3``): one score per overlapping patch.

    C64 (no norm), then ``n_layers - 1`` stride-2 blocks, a stride-1 block (channels doubling, capped at
    ``8 * ndf``; 4x4 conv, InstanceNorm, LeakyReLU 0.2), and a 4x4 conv to 1 channel. All convs use padding 1, so
    each stride-2 conv maps a size s to floor(s / 2) and each stride-1 conv to s - 1: with ``n_layers=3``,
    H' = H / 8 - 2 for H a multiple of 8 (256 -> 30, 64 -> 6). Weights are initialized by ``init_weights``.

    ``forward``: float [B, 3, H, W] in [0, 1] -> raw scores float [B, 1, H', W'] (no sigmoid: least-squares GAN,
    real -> 1, fake -> 0; see ``adapt.losses.lsgan_loss``).

    Args:
        ndf: channels of the first layer (64 in the paper).
        n_layers: stride-2 convolutions.
    """

    def __init__(self, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        channels = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1), nn.InstanceNorm2d(out),
                       nn.LeakyReLU(0.2, True)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_to_tanh_range(x))


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


class ImagePool:
    """History of generated images: the discriminator sees a mix of current and past fakes (CycleGAN sec. 4,
    after Shrivastava et al. 2017), which damps oscillation.

    ``query(images)`` goes image by image: while the pool holds fewer than ``size`` images, store the image and
    return it; once full, with probability 0.5 return a random stored image and store the new one in its place,
    otherwise return the new one. ``size=0`` returns the input unchanged. Stored and returned images are
    detached (and stored ones cloned), so the result carries no graph back to the generator.

    Args:
        size: images held (50 in the paper).
        generator: the RNG for the coin flips and slot picks (CPU ``torch.Generator``); None uses torch's global
            RNG, which ``seed_everything`` seeds.
    """

    def __init__(self, size: int = 50, generator: torch.Generator | None = None) -> None:
        if size < 0:
            raise ValueError(f"size: must be >= 0, got {size}")
        self.size, self.generator = size, generator
        self.images: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """float [B, C, H, W] (the latest fakes) -> float [B, C, H, W], detached (the input itself if size 0)."""
        if self.size == 0:
            return images
        returned = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                returned.append(image)
            elif torch.rand(1, generator=self.generator).item() < 0.5:
                slot = int(torch.randint(self.size, (1,), generator=self.generator))
                returned.append(self.images[slot].to(image.device))
                self.images[slot] = image.clone()
            else:
                returned.append(image)
        return torch.stack(returned)

    def state_dict(self) -> dict:
        """``{"size": int, "images": list of float [C, H, W], "rng": uint8 tensor or None}`` (``rng``: the state
        of ``generator``, when there is one)."""
        return {"size": self.size, "images": list(self.images),
                "rng": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        images = list(state["images"])
        if len(images) > self.size:
            raise ValueError(f"ImagePool: state holds {len(images)} images, more than size={self.size}")
        self.images = [image.detach().clone() for image in images]
        if self.generator is not None and state.get("rng") is not None:
            self.generator.set_state(state["rng"])
