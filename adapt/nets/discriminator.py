"""CycleGAN's 70x70 PatchGAN discriminator and the image pool it is updated from (Zhu et al. 2017, appendix 7.2;
Shrivastava et al. 2017).

- ``PatchDiscriminator(x)``: float [B, 3, H, W] in [0, 1] -> raw (LSGAN, no sigmoid) scores float [B, 1, H', W'].
- ``ImagePool``: the history of generated images the discriminator is updated with.
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
