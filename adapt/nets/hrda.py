"""HRDA's multi-resolution F (Hoyer et al. 2022), as the official ``HRDAEncoderDecoder`` and ``HRDAHead`` compute it
(lhoyer/MIC 2f932a98, ``gtaHR2csHR_hrda.py``): a context crop at low resolution, a detail crop at full resolution
inside it, fused by a learned per-class scale attention.

``MultiResolution`` is an optional part of the segmenter (``Segmenter.enable_multi_resolution``), saved with F's
weights under ``multi_resolution.*``: the scale-attention head (``multi_resolution.attention.*``) and the crop and
fusion rules. It holds no reference to F; every method takes the segmenter and runs its encoder and decoder
(``segmenter.encode`` / ``segmenter.decode``).

With x float [B, 3, H, W] in [0, 1] (the training crop at full resolution), k = 1 / context_scale, o F's logit
stride (``segmenter.logit_stride``: DAFormer's 4; 1 for the other nets, whose logits come at the input's size) and
(h, w) the detail crop:

- context: x resized (bilinear) by 1/k; F's encoder on it; F's decoder gives the context logits
  c [B, C, H / (k o), W / (k o)], and the scale attention a = sigmoid(A(the same encoder features)), of c's shape,
  one channel per class. A is a second head (``Segmenter.scale_attention_head``): for DAFormer HRDA's, a DAFormer
  head of the same width whose fusion is one 1x1 convolution (BatchNorm, ReLU); for the other nets a fresh copy of
  F's decoder and classifier;
- detail: F on the full-resolution crop x[..., top:top + h, left:left + w]: d [B, C, h / o, w / o]. Training: one
  box per batch, each offset uniform over {0, g, ..., g * ((H - h + 1) // g - 1)} with g = k o (HRDA's
  ``get_crop_bbox`` with ``crop_coord_divisible`` 8; like it, the last aligned position H - h is never drawn).
  Inference: overlapping windows (stride half the crop, the last at the border), run as one batch, their logits
  averaged at stride o where they overlap (``decode_hr``), covering the whole image;
- fusion at stride o of the full resolution (``HRDAHead.forward``): in training a is zeroed outside the box (on
  c's grid), then ``f = up(a) * d_inserted + up((1 - a) * c)`` [B, C, H / o, W / o], ``up`` bilinear by k and
  ``d_inserted`` the detail logits placed at the box / o, zero elsewhere; f is upsampled (bilinear,
  ``align_corners=False``) to H x W last: for the losses (mmseg's ``losses`` resize logits to the labels) and the
  prediction (``encode_decode``'s ``upscale_pred``).
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as nnf

from adapt.errors import ConfigError
from adapt.inference import pad_to_multiple, window_starts


class MultiResolutionOutput(NamedTuple):
    """One training pass: ``fused`` [B, C, H, W] (the fusion at stride o, upsampled to the crop), ``detail``
    [B, C, h, w] (the box's logits, upsampled from stride o), ``box`` (top, left) of the detail crop in
    full-resolution pixels, ``context`` [B, C, H / (k o), W / (k o)] context logits, ``attention`` of the same shape
    in [0, 1] (before the box mask), ``features`` F's deepest encoder features of the context pass (None unless
    asked)."""

    fused: torch.Tensor
    detail: torch.Tensor
    box: tuple[int, int]
    context: torch.Tensor
    attention: torch.Tensor
    features: torch.Tensor | None


def check_settings(context_scale: float, detail_crop: tuple[int, int], output_stride: int,
                   crop: tuple[int, int] | None = None, logit_stride: int = 1) -> None:
    """ConfigError (one line, naming the recipe key) unless: ``context_scale`` is 1/k with k >= 2 dividing
    ``output_stride`` (0.5, 0.25, ...); ``detail_crop`` is two positive multiples of ``output_stride`` and of the
    fusion grid k * ``logit_stride`` (detail boxes fall on whole context logits); and, given the training ``crop``
    (H, W), its sides are multiples of ``output_stride * k`` (the context fits F) and at least the detail crop's."""
    factor = round(1 / context_scale) if 0 < context_scale < 1 else 0
    if factor < 2 or abs(1 / context_scale - factor) > 1e-6 or output_stride % factor:
        raise ConfigError(f"model.init_args.multi_resolution.context_scale: {context_scale}; give 1/k with k "
                          f"dividing F's output stride {output_stride} (HRDA: 0.5)")
    multiple = math.lcm(int(output_stride), factor * int(logit_stride))
    if len(detail_crop) != 2 or any(int(v) < 1 or int(v) % multiple for v in detail_crop):
        what = (f"F's output stride {output_stride}" if multiple == output_stride else
                f"{multiple} (F's output stride {output_stride} and the fusion grid {factor * logit_stride})")
        raise ConfigError(f"model.init_args.multi_resolution.detail_crop: {list(detail_crop)}; give two positive "
                          f"multiples of {what} (HRDA: 512 512)")
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


def scale_attention_head(segmenter: nn.Module) -> tuple[nn.Module, str]:
    """HRDA's scale attention for ``segmenter`` (decoded by ``segmenter.decode(features, size, head)``) and the name
    of its classifier in it. DAFormer: HRDA's own (``DAFormer.scale_attention_head``: a DAFormer head with a 1x1
    fusion). Other nets: a copy of F's net without its encoder (its decoder and classifier), freshly initialized as
    the net's constructor initializes them."""
    from segmentation_models_pytorch.base import SegmentationModel, initialization

    from adapt.nets.vit import DPT, ViTUPerNet

    net = segmenter.net
    if hasattr(net, "scale_attention_head"):
        head = net.scale_attention_head()
    else:
        head = copy.deepcopy(net, {id(net.encoder): nn.Identity()})
        for module in head.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        if isinstance(net, (SegmentationModel, DPT, ViTUPerNet)):  # smp's initialization (FCN: torch's)
            initialization.initialize_decoder(head.decoder)
            initialization.initialize_head(head.segmentation_head)
    classifier = head.segmentation_head[0] if isinstance(head, SegmentationModel) else head.classifier
    return head, next(name for name, module in head.named_modules() if module is classifier)


def upsample(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float [B, C, h, w] -> [B, C, *size], bilinear (``align_corners=False``); unchanged at its own size."""
    size = (int(size[0]), int(size[1]))
    return t if tuple(t.shape[-2:]) == size else nnf.interpolate(t, size=size, mode="bilinear", align_corners=False)


class MultiResolution(nn.Module):
    """The scale-attention head and HRDA's crop and fusion rules (see the module's docstring).

    Args:
        attention: the scale-attention head A (``Segmenter.scale_attention_head``), decoded by
            ``segmenter.decode(features, size, attention)``; one output channel per class.
        classifier: the name of A's last convolution inside it (its rows are classes, for ``load_matching``).
        context_scale: 1 / k, the context's resolution relative to the input (HRDA: 0.5).
        detail_crop: (h, w) of the detail crop at full resolution (HRDA: 512 x 512).
        output_stride: F's (32): what the context and detail inputs must be multiples of.
        logit_stride: o, F's logit stride (DAFormer: 4): the fusion runs at stride o; crop offsets are multiples of
            k o (HRDA: 8).
    """

    def __init__(self, attention: nn.Module, classifier: str, context_scale: float = 0.5,
                 detail_crop: tuple[int, int] = (512, 512), output_stride: int = 32, logit_stride: int = 1) -> None:
        super().__init__()
        check_settings(context_scale, detail_crop, output_stride, logit_stride=logit_stride)
        self.attention, self.classifier_name = attention, classifier
        self.context_scale, self.output_stride = float(context_scale), int(output_stride)
        self.factor, self.logit_stride = round(1 / context_scale), int(logit_stride)  # k, o
        self.grid = self.factor * self.logit_stride  # HRDA's crop_coord_divisible
        self.detail_crop = (int(detail_crop[0]), int(detail_crop[1]))

    @property
    def classifier(self) -> nn.Conv2d:
        """The attention head's last convolution (one output channel per class)."""
        return self.attention.get_submodule(self.classifier_name)

    def sample_box(self, size: tuple[int, int], generator: torch.Generator | None = None) -> tuple[int, int]:
        """(top, left) of a detail crop inside an image of ``size`` (H, W), drawn by ``generator`` (CPU): each
        offset ``g * randint((H - h + 1) // g)`` with g = k o (HRDA's ``get_crop_bbox``), at least one choice."""
        offsets = []
        for side, crop in zip(size, self.detail_crop):
            margin = int(side) - crop
            if margin < 0:
                raise ValueError(f"detail crop {self.detail_crop} larger than the image {tuple(size)}")
            choices = max((margin + 1) // self.grid, 1)
            offsets.append(int(torch.randint(choices, (1,), generator=generator)) * self.grid)
        return offsets[0], offsets[1]

    def context_image(self, x: torch.Tensor) -> torch.Tensor:
        """The context crop: float [B, 3, H, W] -> [B, 3, H / k, W / k], resized (bilinear; at k = 2 each context
        pixel is the mean of a 2 x 2 block)."""
        size = (x.shape[-2] // self.factor, x.shape[-1] // self.factor)
        return nnf.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def context_pass(self, segmenter: nn.Module, x: torch.Tensor, features: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """F on the context of ``x`` (float [B, 3, H, W], H and W multiples of ``output_stride * k``): (context
        logits [B, C, H / (k o), W / (k o)], attention of that shape in [0, 1] from the same encoder features,
        deepest encoder features or None)."""
        image = self.context_image(x)
        encoded = segmenter.encode(image)
        size = tuple(image.shape[-2:])
        logits = segmenter.decode(encoded, size)
        attention = torch.sigmoid(segmenter.decode(encoded, size, self.attention))
        return logits, attention, segmenter.deepest(encoded) if features else None

    def fuse(self, context: torch.Tensor, attention: torch.Tensor, detail: torch.Tensor,
             box: tuple[int, int] | None = None) -> torch.Tensor:
        """``up(a) * d_inserted + up((1 - a) * c)`` at stride o: [B, C, H / o, W / o] with c = ``context`` and
        a = ``attention`` [B, C, H / (k o), W / (k o)].

        ``box``: (top, left) of ``detail`` [B, C, h / o, w / o] in full-resolution pixels (multiples of k o); the
        attention is zeroed outside it (training). None: ``detail`` covers the whole image [B, C, H / o, W / o]
        (inference)."""
        k, o = self.factor, self.logit_stride
        if box is not None:
            top, left = box
            h, w = detail.shape[-2] * o, detail.shape[-1] * o
            g = self.grid
            mask = attention.new_zeros(attention.shape[0], 1, *attention.shape[-2:])
            mask[..., top // g:(top + h) // g, left // g:(left + w) // g] = 1
            attention = attention * mask
        size = (context.shape[-2] * k, context.shape[-1] * k)
        context, attention = upsample((1 - attention) * context, size), upsample(attention, size)
        if box is not None:
            inserted = torch.zeros_like(context)
            inserted[..., top // o:top // o + detail.shape[-2], left // o:left // o + detail.shape[-1]] = detail
            detail = inserted
        return attention * detail + context

    def forward_train(self, segmenter: nn.Module, x: torch.Tensor, box: tuple[int, int],
                      features: bool = False) -> MultiResolutionOutput:
        """HRDA's training pass on the crop ``x`` (float [B, 3, H, W]) with the detail crop at ``box`` (top, left;
        from ``sample_box``): the context pass, F on the detail crop, fused at stride o, then upsampled."""
        context, attention, deepest = self.context_pass(segmenter, x, features)
        top, left = box
        h, w = self.detail_crop
        detail = segmenter.decode(segmenter.encode(x[..., top:top + h, left:left + w]), (h, w))
        fused = self.fuse(context, attention, detail, (top, left))
        return MultiResolutionOutput(upsample(fused, x.shape[-2:]), upsample(detail, (h, w)), (top, left), context,
                                     attention, deepest)

    def detail_slide(self, segmenter: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """F's logits of ``x`` [B, 3, H, W] at stride o, [B, C, H / o, W / o], from overlapping detail windows
        (stride half the crop, the last window at the border; a window larger than ``x`` shrinks to it) run as one
        batch (HRDA's ``extract_slide_feat``), averaged where they overlap (``decode_hr``); float32."""
        height, width = x.shape[-2:]
        win_h, win_w = min(self.detail_crop[0], height), min(self.detail_crop[1], width)
        boxes = [(top, left) for top in window_starts(height, win_h, max(self.detail_crop[0] // 2, 1))
                 for left in window_starts(width, win_w, max(self.detail_crop[1] // 2, 1))]
        windows = torch.cat([x[..., top:top + win_h, left:left + win_w] for top, left in boxes])
        logits = segmenter.decode(segmenter.encode(windows), (win_h, win_w)).split(x.shape[0])
        o = self.logit_stride  # float32 sums (under bf16 autocast too)
        total = torch.zeros(*logits[0].shape[:2], height // o, width // o, device=x.device)
        count = torch.zeros(1, 1, height // o, width // o, device=x.device)
        for (top, left), part in zip(boxes, logits):
            total[..., top // o:top // o + part.shape[-2], left // o:left // o + part.shape[-1]] += part
            count[..., top // o:top // o + part.shape[-2], left // o:left // o + part.shape[-1]] += 1
        return total / count

    def predict(self, segmenter: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """HRDA's inference on a whole input (pseudo-labels, evaluation): ``x`` float [B, 3, H, W] of any size,
        padded (replicate) to multiples of ``output_stride * k``; context pass, sliding detail windows, fused
        without a box at stride o, upsampled; logits float [B, C, H, W] cropped back."""
        height, width = x.shape[-2:]
        x = pad_to_multiple(x, self.output_stride * self.factor)
        context, attention, _ = self.context_pass(segmenter, x)
        fused = self.fuse(context, attention, self.detail_slide(segmenter, x))
        return upsample(fused, x.shape[-2:])[..., :height, :width]
