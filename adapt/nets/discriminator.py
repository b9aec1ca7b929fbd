"""Discriminators: CycleGAN's 70x70 PatchGAN and the image pool it is updated from (Zhu et al. 2017, appendix 7.2;
Shrivastava et al. 2017), and the domain discriminators of adversarial alignment (``adapt.tasks.adversarial``).

- ``PatchDiscriminator(x)``: float [B, 3, H, W] in [0, 1] -> raw (LSGAN, no sigmoid) scores float [B, 1, H', W'].
- ``ImagePool``: the history of generated images the discriminator is updated with.
- ``OutputDiscriminator(i)``: AdvEnt's, on F's self-information maps [B, C, H, W] -> raw scores [B, 1, H/32, W/32].
- ``FeatureDiscriminator(f)``: CyCADA's, on F's encoder features [B, D, h, w] -> raw scores [B, 1, h, w].
"""

from __future__ import annotations

import torch
from torch import nn

from adapt.nets.translator import init_weights, to_tanh_range


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
        return self.net(to_tanh_range(x))


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


class OutputDiscriminator(nn.Module):
    """AdvEnt's fully convolutional discriminator (Vu et al., CVPR 2019, sec. 4; ADVENT's ``get_fc_discriminator``):
    five 4x4 convolutions of stride 2 and padding 1, widths ``ndf``, 2, 4 and 8 ``ndf``, then 1, each but the last
    followed by LeakyReLU(0.2); no normalization; torch's default initialization, as ADVENT's.

    ``forward``: the self-information map float [B, C, H, W] (``adapt.losses.self_information``; H and W
    multiples of 32) -> raw scores float [B, 1, H / 32, W / 32] (no sigmoid: ``adapt.losses.domain_bce``; > 0 reads
    "target").

    Args:
        num_classes: C, the input's channels.
        ndf: channels of the first convolution (64 in AdvEnt).
    """

    def __init__(self, num_classes: int, ndf: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = num_classes
        for width in (ndf, 2 * ndf, 4 * ndf, 8 * ndf):
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            channels = width
        layers.append(nn.Conv2d(channels, 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FeatureDiscriminator(nn.Module):
    """CyCADA's feature discriminator (Hoffman et al. 2018; jhoffman/cycada_release ``models/fcn8s.py``
    ``Discriminator``): a per-cell MLP as 1x1 convolutions, ``in_channels -> width -> width / 2 -> 1``, each hidden
    layer followed by Dropout2d and ReLU (CyCADA: width 512 for inputs other than FCN-8s' 4096-channel fc7, 1024
    for those; dropout 0.5). One raw score per cell (CyCADA: two logits and a softmax cross-entropy, the same
    classifier), torch's default initialization, as CyCADA's.

    ``forward``: F's deepest encoder features float [B, in_channels, h, w] -> raw scores float [B, 1, h, w].

    Args:
        in_channels: the features' channels (``Segmenter.net.encoder.out_channels[-1]``).
        width: the first hidden layer's channels (the second has half as many).
        dropout: Dropout2d probability after each hidden layer (0 turns it off).
    """

    def __init__(self, in_channels: int, width: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        half = max(width // 2, 1)
        self.net = nn.Sequential(nn.Conv2d(in_channels, width, 1), nn.Dropout2d(dropout), nn.ReLU(inplace=True),
                                 nn.Conv2d(width, half, 1), nn.Dropout2d(dropout), nn.ReLU(inplace=True),
                                 nn.Conv2d(half, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
