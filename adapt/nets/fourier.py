"""Fourier domain adaptation (FDA, Yang & Soatto 2020): a translator T that needs no training.

An image's low-frequency amplitude spectrum carries its global style (illumination, colour cast, contrast); the
phase carries its content. ``fda_transfer`` replaces the amplitudes in a centred low-frequency square of side
``2 * floor(beta * min(H, W)) + 1`` by those of a reference image of the other domain and keeps the phase.

``FourierTranslator`` holds a bank of reference images and styles each input with one of them drawn at random; it is
used wherever a CycleGAN generator is (``translator_checkpoint``, ``adapt evaluate --translator``,
``adapt translate``) through a checkpoint written by ``adapt fda`` (``adapt.workflows.fda``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as nnf


def low_frequency_size(height: int, width: int, beta: float) -> int:
    """Half-side ``b`` of the swapped square: frequencies ``-b..b`` on both axes (0: nothing is swapped)."""
    return int(beta * min(height, width))


def fda_transfer(x: torch.Tensor, reference: torch.Tensor, beta: float) -> torch.Tensor:
    """Give ``x`` the low-frequency amplitude of ``reference``.

    ``x``, ``reference``: float [B, 3, H, W] in [0, 1] (the same size; resize the reference first).
    Returns float [B, 3, H, W], clamped to [0, 1]; ``x`` itself, untouched, when ``beta`` leaves no frequency to swap.
    """
    if x.shape != reference.shape:
        raise ValueError(f"fda_transfer: image {tuple(x.shape)} and reference {tuple(reference.shape)} differ")
    height, width = x.shape[-2:]
    b = low_frequency_size(height, width, beta)
    if b == 0:
        return x
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # FFTs in at least float32 (bf16 inputs)
    spectrum = torch.fft.fft2(x.to(dtype))
    amplitude, phase = spectrum.abs(), spectrum.angle()
    reference_amplitude = torch.fft.fft2(reference.to(dtype)).abs()
    # low frequencies sit in the corners of the unshifted spectrum: rows -b..b and columns -b..b
    rows = torch.cat([torch.arange(0, b + 1), torch.arange(height - b, height)]).unique().to(x.device)
    cols = torch.cat([torch.arange(0, b + 1), torch.arange(width - b, width)]).unique().to(x.device)
    box = torch.zeros(height, width, dtype=torch.bool, device=x.device)
    box[rows[:, None], cols[None, :]] = True
    amplitude = torch.where(box, reference_amplitude, amplitude)
    styled = torch.fft.ifft2(torch.polar(amplitude, phase)).real
    return styled.clamp(0, 1).to(x.dtype)


class FourierTranslator(nn.Module):
    """A training-free T: ``forward(x)`` styles each image with a reference drawn at random from ``bank``.

    Args:
        bank: uint8 [N, 3, h, w], reference images of the domain to imitate (resized to each input's size).
        beta: the low-frequency share swapped (FDA's β; 0.01 in the paper for GTA5 -> Cityscapes, 0 = identity).
    """

    multiple = 1  # any input size (``translate_padded`` pads nothing)

    def __init__(self, bank: torch.Tensor, beta: float) -> None:
        super().__init__()
        if bank.dtype != torch.uint8 or bank.dim() != 4 or bank.shape[1] != 3 or len(bank) == 0:
            raise ValueError(f"FourierTranslator: bank must be uint8 [N, 3, h, w], got {bank.dtype} "
                             f"{tuple(bank.shape)}")
        self.register_buffer("bank", bank)
        self.beta = beta
        self.generator: torch.Generator | None = None  # draws of references (None: torch's global RNG)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float [B, 3, H, W] in [0, 1] -> float [B, 3, H, W] in [0, 1]."""
        picks = torch.randint(len(self.bank), (x.shape[0],), generator=self.generator)
        reference = self.bank[picks].to(x.device, torch.float32) / 255
        reference = nnf.interpolate(reference, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return fda_transfer(x, reference.to(x.dtype), self.beta)


def read_bank(dataset, count: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """uint8 [count, 3, size...]: ``count`` images of ``dataset`` (drawn by ``seed``; all if fewer), resized."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    images = []
    for index in order.tolist():
        image = dataset[index]["image"][None]  # float [1, 3, H, W] in [0, 1]
        image = nnf.interpolate(image, size=tuple(size), mode="area")
        images.append((image[0] * 255).round().to(torch.uint8))
    return torch.stack(images)
