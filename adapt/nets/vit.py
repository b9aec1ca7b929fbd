"""Plain ViT encoders (DINOv2 and other timm ViTs, ``tu-`` names) under smp's DPT and UPerNet decoders.

A plain ViT keeps one stride, its patch size p, in every block; segmentation decoders expect a pyramid (strides 4,
8, 16, 32). smp 0.6.0's ``DPT`` derives its reassembly factors from p / 4, ... and breaks for p = 14 (DINOv2;
smp issue #1328), and its ``UPerNet`` refuses plain ViTs. Here the ViT's token grids are resampled (bilinear) to
the sizes the decoders need, computed from the input, and the logits are resized to the input: any input whose
sides are multiples of p works (``output_stride`` = p, what ``adapt.inference`` pads to); other sides raise a
ConfigError that says so. With p = 16 and sides that are multiples of 32 nothing is resampled: ``DPT`` is then
smp's DPT (same modules, same state-dict names).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import timm
import torch
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.base import initialization as init
from segmentation_models_pytorch.decoders.dpt.decoder import DPTDecoder, DPTSegmentationHead
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
from segmentation_models_pytorch.encoders.timm_vit import TimmViTEncoder
from torch import nn
from torch.nn import functional as nnf

from adapt.errors import ConfigError


def is_plain_vit(encoder_name: str) -> bool:
    """True for a ``tu-`` timm model whose blocks all keep one stride (a ViT, no feature pyramid of its own)."""
    if not encoder_name.startswith("tu-"):
        return False
    try:
        with torch.device("meta"):
            model = timm.create_model(encoder_name[3:], pretrained=False)
    except Exception:  # an unknown name: left to the builder's own error
        return False
    info = getattr(model, "feature_info", None)
    return hasattr(model, "forward_intermediates") and bool(info) and len({f["reduction"] for f in info}) == 1


class ViTEncoder(TimmViTEncoder):
    """smp's ViT encoder (``encoder.model`` is the timm model) with ``dynamic_img_size`` on by default.

    ``forward(x)``: float [B, 3, H, W], H and W multiples of ``patch_size`` -> ``depth`` token grids float
    [B, D, H/p, W/p] (blocks ``output_indices``, prefix tokens dropped), the deepest last, as smp's encoders.
    ``forward_tokens(x)``: (those grids, each block's prefix tokens [B, T, D] or None), for DPT's readout.
    """

    def __init__(self, encoder_name: str, encoder_weights: str | None, depth: int = 4,
                 output_indices: Sequence[int] | None = None, **kwargs) -> None:
        if not is_plain_vit(encoder_name):
            raise ConfigError(f"encoder_name: {encoder_name!r} is not a plain ViT from timm; this arch takes a "
                              "'tu-' ViT such as tu-vit_small_patch14_dinov2 or tu-vit_base_patch14_dinov2.lvd142m")
        kwargs.setdefault("dynamic_img_size", True)  # any input size (the position embedding is interpolated)
        indices = list(output_indices) if output_indices is not None else None
        super().__init__(encoder_name[3:], pretrained=encoder_weights is not None, depth=depth,
                         output_indices=indices, **kwargs)
        self.encoder_name = encoder_name
        self.patch_size = int(self.model.patch_embed.patch_size[0])

    def check_size(self, x: torch.Tensor) -> None:
        """ConfigError unless x's sides are multiples of the patch size."""
        height, width, p = int(x.shape[-2]), int(x.shape[-1]), self.patch_size
        if height % p or width % p:
            raise ConfigError(
                f"input {height}x{width}: the ViT encoder {self.encoder_name} takes sides that are multiples of its "
                f"patch size {p}; set data.init_args.crop_size (or resize) to multiples of {p} (say "
                f"{max(height // p, 1) * p}x{max(width // p, 1) * p}), or predict through adapt.inference (predict, "
                f"predict_padded: they pad to the segmenter's output_stride, {p})")

    def forward_tokens(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        self.check_size(x)
        return super().forward(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_tokens(x)[0]


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return nnf.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _ViTNet(nn.Module):
    """The shared pass: encoder -> ``decode`` (a decoder's input, resampled from the grids) -> head -> logits
    resized to the input. Subclasses set ``encoder``, ``decoder``, ``segmentation_head`` and ``decode``."""

    @property
    def output_stride(self) -> int:
        return self.encoder.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits float [B, classes, H, W], the deepest token grid float [B, D, H/p, W/p]) from one pass."""
        grids, tokens = self.encoder.forward_tokens(x)
        logits = self.segmentation_head(self.decode(grids, tokens, (x.shape[-2], x.shape[-1])))
        return _resize(logits, (x.shape[-2], x.shape[-1])), grids[-1]


class DPT(_ViTNet):
    """smp's DPT decoder and head on a plain ViT of any patch size (DINOv2: 14).

    The token grids are resampled to the grid a patch-16 ViT would give for an input of the next multiple of
    ``16 * 2 ** max(depth - 3, 0)`` pixels (so that every fusion stage of smp's decoder, built for stride 16,
    meets features of its own size); the logits are resized to the input. Arguments as smp's ``DPT``; further
    keyword arguments go to ``timm.create_model`` (``img_size``, ``dynamic_img_size``, ...). A ViT without
    prefix tokens reads out with ``ignore`` whatever ``decoder_readout`` says.
    """

    def __init__(self, encoder_name: str = "tu-vit_small_patch14_dinov2", encoder_weights: str | None = None,
                 classes: int = 19, encoder_depth: int = 4, encoder_output_indices: list[int] | None = None,
                 decoder_readout: Literal["ignore", "add", "cat"] = "cat",
                 decoder_intermediate_channels: Sequence[int] = (256, 512, 1024, 1024),
                 decoder_fusion_channels: int = 256, **kwargs) -> None:
        super().__init__()
        self.encoder = ViTEncoder(encoder_name, encoder_weights, encoder_depth, encoder_output_indices, **kwargs)
        readout = decoder_readout if self.encoder.has_prefix_tokens else "ignore"
        self.decoder = DPTDecoder(self.encoder.out_channels, [16] * encoder_depth, self.encoder.has_prefix_tokens,
                                  readout, tuple(decoder_intermediate_channels), decoder_fusion_channels)
        self.segmentation_head = DPTSegmentationHead(decoder_fusion_channels, classes, kernel_size=3, upsampling=2)
        self.unit = 16 * 2 ** max(encoder_depth - 3, 0)
        init.initialize_decoder(self.decoder)
        init.initialize_head(self.segmentation_head)

    @property
    def classifier(self) -> nn.Conv2d:
        return self.segmentation_head.head[-1]

    def decode(self, grids: list[torch.Tensor], tokens: list, size: tuple[int, int]) -> torch.Tensor:
        grid = tuple(math.ceil(side / self.unit) * self.unit // 16 for side in size)
        return self.decoder([_resize(g, grid) for g in grids], tokens)


class ViTUPerNet(_ViTNet):
    """smp's UPerNet decoder on a plain ViT: four blocks' token grids resampled (bilinear) to strides 4, 8, 16
    and 32 of the input (as mmseg's ``MultiLevelNeck`` for ViT + UPerNet, without its convolutions: the decoder's
    LayerNorms and lateral convolutions follow), a 1x1 classifier at stride 4, logits resized to the input.
    Arguments as smp's ``UPerNet``; further keyword arguments go to ``timm.create_model``."""

    def __init__(self, encoder_name: str = "tu-vit_small_patch14_dinov2", encoder_weights: str | None = None,
                 classes: int = 19, encoder_output_indices: list[int] | None = None, decoder_channels: int = 256,
                 decoder_use_norm: bool | str | dict = "batchnorm", **kwargs) -> None:
        super().__init__()
        self.encoder = ViTEncoder(encoder_name, encoder_weights, 4, encoder_output_indices, **kwargs)
        channels = [3, 0, *self.encoder.out_channels]  # smp's layout: input, stride 2 (none), strides 4 .. 32
        self.decoder = UPerNetDecoder(channels, encoder_depth=5, decoder_channels=decoder_channels,
                                      use_norm=decoder_use_norm)
        self.segmentation_head = SegmentationHead(decoder_channels, classes, kernel_size=1, upsampling=1)
        init.initialize_decoder(self.decoder)
        init.initialize_head(self.segmentation_head)

    @property
    def classifier(self) -> nn.Conv2d:
        return self.segmentation_head[0]

    def decode(self, grids: list[torch.Tensor], tokens: list, size: tuple[int, int]) -> torch.Tensor:
        pyramid = [_resize(g, tuple(math.ceil(side / 2 ** (i + 2)) for side in size)) for i, g in enumerate(grids)]
        return self.decoder([grids[0], grids[0], *pyramid])  # the decoder reads levels 2 and up
