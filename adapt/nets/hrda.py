"""HRDA's multi-resolution F (Hoyer et al. 2022): a context crop at low resolution, a detail crop at full resolution
inside it, fused by a learned per-class scale attention.

``MultiResolution`` is an optional part of the segmenter (``Segmenter.enable_multi_resolution``), saved with F's
weights under ``multi_resolution.*``: the scale-attention head and the crop and fusion rules. It holds no reference
to F; every method takes the segmenter and runs its single-scale pass (``segmenter.single_scale``).

With x float [B, 3, H, W] in [0, 1] (the training crop at full resolution), s the context scale and (h, w) the
detail crop:

- context: x resized (bilinear) by s; F's logits of it c [B, C, sH, sW]; the attention a = sigmoid(head(features))
  [B, C, sH, sW], one channel per class, from the features F's classifier reads in the same pass (its decoder's
  output), resized (bilinear) to the context logits;
- detail: F's logits d of the full-resolution crop x[..., top:top + h, left:left + w] (training: one crop per
  batch, offsets drawn on multiples of F's output stride; inference: overlapping windows, stride half the crop,
  logits averaged where they overlap, which covers the whole image);
- fusion (HRDA's ``HRDAHead.forward``): in training a is zeroed outside the detail box (at context resolution), then
  ``fused = up(a) * d_inserted + up((1 - a) * c)``, ``up`` bilinear to H x W and ``d_inserted`` the detail logits
  placed in their box, zero elsewhere: the attention weighs the detail, and outside the box the fused logits are
  the upsampled context logits (up to the one-pixel bilinear seam at the box border).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as nnf

from adapt.errors import ConfigError
from adapt.inference import pad_to_multiple, predict_slide


class MultiResolutionOutput(NamedTuple):
    """One training pass: ``fused`` [B, C, H, W], ``detail`` [B, C, h, w] (the box's full-resolution logits),
    ``box`` (top, left) of the detail crop in full-resolution pixels, ``context`` [B, C, sH, sW] context logits,
    ``attention`` [B, C, sH, sW] in [0, 1] (before the box mask), ``features`` F's deepest encoder features of the
    context pass [B, D, sH/32, sW/32] (None unless asked)."""

    fused: torch.Tensor
    detail: torch.Tensor
    box: tuple[int, int]
    context: torch.Tensor
    attention: torch.Tensor
    features: torch.Tensor | None


def check_settings(context_scale: float, detail_crop: tuple[int, int], output_stride: int,
                   crop: tuple[int, int] | None = None) -> None:
    """ConfigError (one line, naming the recipe key) unless: ``context_scale`` is 1/k with k >= 2 dividing
    ``output_stride`` (0.5, 0.25, ...; so that detail boxes fall on whole context pixels); ``detail_crop`` is two
    positive multiples of ``output_stride``; and, given the training ``crop`` (H, W), its sides are multiples of
    ``output_stride * k`` (the context fits F) and at least the detail crop's."""
    factor = round(1 / context_scale) if 0 < context_scale < 1 else 0
    if factor < 2 or abs(1 / context_scale - factor) > 1e-6 or output_stride % factor:
        raise ConfigError(f"model.init_args.multi_resolution.context_scale: {context_scale}; give 1/k with k "
                          f"dividing F's output stride {output_stride} (HRDA: 0.5)")
    if len(detail_crop) != 2 or any(int(v) < 1 or int(v) % output_stride for v in detail_crop):
        raise ConfigError(f"model.init_args.multi_resolution.detail_crop: {list(detail_crop)}; give two positive "
                          f"multiples of F's output stride {output_stride} (HRDA: 512 512)")
    if crop is None:
        return
    multiple = output_stride * factor
    if any(int(c) % multiple for c in crop):
        raise ConfigError(f"data.init_args.crop_size: {list(crop)} with multi_resolution.context_scale "
                          f"{context_scale}; give sides that are multiples of {multiple} (the context crop must fit F; "
                          "HRDA: 1024 1024)")
    if any(int(d) > int(c) for d, c in zip(detail_crop, crop)):
        raise ConfigError(f"model.init_args.multi_resolution.detail_crop: {list(detail_crop)} is larger than the "
                          f"training crop {list(crop)} (data.init_args.crop_size); give a detail crop inside it (HRDA: "
                          "512 of 1024)")


class MultiResolution(nn.Module):
    """The scale-attention head and HRDA's crop and fusion rules (see the module's docstring).

    Args:
        in_channels: D, channels of the features F's classifier reads (``segmenter.classifier.in_channels``).
        num_classes: C, one attention channel per class.
        context_scale: s, the context's resolution relative to the input (HRDA: 0.5).
        detail_crop: (h, w) of the detail crop at full resolution (HRDA: 512 x 512).
        output_stride: F's (32): detail sides and crop offsets are multiples of it.
        embed_dim: hidden channels of the attention head (HRDA: 256; here at most D).
    """

    def __init__(self, in_channels: int, num_classes: int, context_scale: float = 0.5,
                 detail_crop: tuple[int, int] = (512, 512), output_stride: int = 32, embed_dim: int = 256) -> None:
        super().__init__()
        check_settings(context_scale, detail_crop, output_stride)
        hidden = min(embed_dim, in_channels)
        self.head = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
                                  nn.ReLU(inplace=True), nn.Conv2d(hidden, num_classes, 1))
        self.context_scale, self.output_stride = float(context_scale), int(output_stride)
        self.factor = round(1 / context_scale)  # k = 1 / s
        self.detail_crop = (int(detail_crop[0]), int(detail_crop[1]))

    def sample_box(self, size: tuple[int, int], generator: torch.Generator | None = None) -> tuple[int, int]:
        """(top, left) of a detail crop inside an image of ``size`` (H, W): each offset uniform over the multiples
        of the output stride from 0 to ``H - h`` (``W - w``), drawn by ``generator`` (CPU)."""
        offsets = []
        for side, crop in zip(size, self.detail_crop):
            choices = (int(side) - crop) // self.output_stride + 1
            if choices < 1:
                raise ValueError(f"detail crop {self.detail_crop} larger than the image {tuple(size)}")
            offsets.append(int(torch.randint(choices, (1,), generator=generator)) * self.output_stride)
        return offsets[0], offsets[1]

    def context_image(self, x: torch.Tensor) -> torch.Tensor:
        """The context crop: float [B, 3, H, W] -> [B, 3, sH, sW], resized (bilinear; at s = 1/2 each context pixel
        is the mean of a 2 x 2 block)."""
        size = (x.shape[-2] // self.factor, x.shape[-1] // self.factor)
        return nnf.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def context_pass(self, segmenter: nn.Module, x: torch.Tensor, features: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """F on the context of ``x`` (float [B, 3, H, W], H and W multiples of ``output_stride / s``): (context
        logits [B, C, sH, sW], attention [B, C, sH, sW] in [0, 1], deepest encoder features or None)."""
        context = self.context_image(x)
        seen: dict[str, torch.Tensor] = {}
        hook = segmenter.classifier.register_forward_pre_hook(lambda m, args: seen.__setitem__("head", args[0]))
        try:  # forward_features: every arch's one pass that also returns its deepest encoder features
            logits, seen["encoder"] = segmenter.forward_features(context) if features else (
                segmenter.single_scale(context), None)
        finally:
            hook.remove()
        attention = torch.sigmoid(self.head(seen["head"]))
        attention = nnf.interpolate(attention, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        return logits, attention, seen.get("encoder")

    def fuse(self, context: torch.Tensor, attention: torch.Tensor, detail: torch.Tensor,
             box: tuple[int, int] | None = None) -> torch.Tensor:
        """``up(a) * d_inserted + up((1 - a) * c)`` at full resolution [B, C, H, W] = [B, C, sH / s, sW / s].

        ``box``: (top, left) of ``detail`` [B, C, h, w] in the full-resolution image; the attention is zeroed
        outside it (training). None: ``detail`` covers the whole image [B, C, H, W] (inference)."""
        height, width = context.shape[-2] * self.factor, context.shape[-1] * self.factor
        if box is not None:
            top, left = box
            h, w = detail.shape[-2:]
            k = self.factor
            mask = torch.zeros_like(attention[:, :1])
            mask[..., top // k:(top + h) // k, left // k:(left + w) // k] = 1
            attention = attention * mask
            detail = nnf.pad(detail, (left, width - left - w, top, height - top - h))

        def up(t: torch.Tensor) -> torch.Tensor:
            return nnf.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)

        return up(attention) * detail + up((1 - attention) * context)

    def forward_train(self, segmenter: nn.Module, x: torch.Tensor, box: tuple[int, int],
                      features: bool = False) -> MultiResolutionOutput:
        """HRDA's training pass on the crop ``x`` (float [B, 3, H, W]) with the detail crop at ``box`` (top, left;
        from ``sample_box``): the context pass, then F on the detail crop, fused."""
        context, attention, deepest = self.context_pass(segmenter, x, features)
        top, left = box
        h, w = self.detail_crop
        detail = segmenter.single_scale(x[..., top:top + h, left:left + w])
        return MultiResolutionOutput(self.fuse(context, attention, detail, box), detail, (top, left), context,
                                     attention, deepest)

    def detail_slide(self, segmenter: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """F's full-resolution logits of ``x`` [B, 3, H, W] from overlapping detail windows (stride half the crop,
        the last window at the border; a window larger than ``x`` shrinks to it), averaged where they overlap."""
        stride = (max(self.detail_crop[0] // 2, 1), max(self.detail_crop[1] // 2, 1))
        return predict_slide(segmenter.single_scale, x, self.detail_crop, stride, self.output_stride)

    def predict(self, segmenter: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """HRDA's inference on a whole input (pseudo-labels, evaluation): ``x`` float [B, 3, H, W] of any size,
        padded (replicate) to multiples of ``output_stride / s``; context pass, sliding detail windows, fused
        without a box; logits float [B, C, H, W] cropped back."""
        height, width = x.shape[-2:]
        x = pad_to_multiple(x, self.output_stride * self.factor)
        context, attention, _ = self.context_pass(segmenter, x)
        return self.fuse(context, attention, self.detail_slide(segmenter, x))[..., :height, :width]
