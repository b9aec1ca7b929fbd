"""DAFormer's segmenter: an smp encoder (DAFormer's is MiT, ``mit_b5``) under the context-aware fusion decoder.

The decoder follows DAFormer's ``DAFormerHead`` with its ``daformer_sepaspp_mitb5`` fusion (Hoyer et al., CVPR
2022): each of the encoder's four levels (strides 4, 8, 16, 32) is embedded to ``decoder_channels`` by a linear
layer (a 1x1 convolution with bias), upsampled (bilinear) to stride 4 and concatenated; the fusion runs parallel
branches over the concatenation (dilation 1: a 1x1 convolution; dilations > 1: depthwise-separable 3x3
convolutions, BatchNorm and ReLU after the depthwise and after the pointwise part; every convolution without bias,
as mmcv's ``ConvModule`` before a norm), concatenates them, and a 3x3 bottleneck convolution (BatchNorm, ReLU) maps
them back to ``decoder_channels``; then channel dropout and a 1x1 classifier (with bias), the logits upsampled
(bilinear, ``align_corners=False``) to the input size.

HRDA's scale attention (``DAFormer.scale_attention_head``, used by ``adapt.nets.hrda``) is a second such head on the
same encoder features, its fusion a single 1x1 convolution (BatchNorm, ReLU: HRDA's ``HRDAHead`` replaces the
``aspp`` fusion by ``conv`` with kernel 1, keeping the norm and activation), without branches or bottleneck.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import segmentation_models_pytorch as smp
import torch
from torch import nn
from torch.nn import functional as nnf


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1,
                 groups: int = 1) -> nn.Sequential:
    """Convolution (no bias, 'same' padding) -> BatchNorm -> ReLU: mmcv's ``ConvModule`` with a BN norm."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                                   dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def separable_conv(in_channels: int, out_channels: int, dilation: int) -> nn.Sequential:
    """mmcv's ``DepthwiseSeparableConvModule``: a depthwise dilated 3x3 and a pointwise 1x1, each with BN + ReLU."""
    return nn.Sequential(conv_bn_relu(in_channels, in_channels, 3, dilation, groups=in_channels),
                         conv_bn_relu(in_channels, out_channels, 1))


class DAFormerDecoder(nn.Module):
    """Multi-level features -> fused features at stride 4.

    Args:
        encoder_channels: channels of the four levels, finest first (MiT-B5: 64, 128, 320, 512).
        decoder_channels: the embedding and fusion width (DAFormer: 256).
        dilations: one fusion branch per dilation (DAFormer: 1, 6, 12, 18).
        dropout: channel dropout before the classifier (DAFormer: 0.1).
        fusion: ``aspp`` (DAFormer's: the dilated branches and the 3x3 bottleneck) or ``conv`` (HRDA's scale
            attention: one 1x1 convolution, BatchNorm, ReLU from the concatenation to ``decoder_channels``;
            ``dilations`` unused).

    ``forward(features)``: four float tensors [B, c_i, H / s_i, W / s_i], s_i = 4, 8, 16, 32 -> float
    [B, decoder_channels, H / 4, W / 4] (the finest level's size).
    """

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: int = 256,
                 dilations: Sequence[int] = (1, 6, 12, 18), dropout: float = 0.1,
                 fusion: Literal["aspp", "conv"] = "aspp") -> None:
        super().__init__()
        if fusion not in ("aspp", "conv"):
            raise ValueError(f"DAFormerDecoder fusion: {fusion!r}; choose aspp or conv")
        self.fusion = fusion
        self.embed = nn.ModuleList(nn.Conv2d(c, decoder_channels, 1) for c in encoder_channels)
        fused = decoder_channels * len(encoder_channels)
        if fusion == "aspp":
            self.branches = nn.ModuleList(conv_bn_relu(fused, decoder_channels, 1) if d == 1
                                          else separable_conv(fused, decoder_channels, d) for d in dilations)
            self.bottleneck = conv_bn_relu(decoder_channels * len(dilations), decoder_channels, 3)
        else:
            self.fuse = conv_bn_relu(fused, decoder_channels, 1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        embedded = [embed(f) for embed, f in zip(self.embed, features)]
        embedded = [e if e.shape[-2:] == size else nnf.interpolate(e, size=size, mode="bilinear", align_corners=False)
                    for e in embedded]
        x = torch.cat(embedded, dim=1)
        if self.fusion == "conv":
            return self.dropout(self.fuse(x))
        return self.dropout(self.bottleneck(torch.cat([branch(x) for branch in self.branches], dim=1)))


def initialize(decoder: DAFormerDecoder, classifier: nn.Conv2d) -> None:
    """mmcv's ``ConvModule`` init (Kaiming normal, fan out) on the decoder's bias-free convolutions (the
    embeddings keep torch's, as ``nn.Linear``), mmseg's ``conv_seg`` init (normal, std 0.01; bias 0) on the
    classifier."""
    for module in decoder.modules():
        if isinstance(module, nn.Conv2d) and module.bias is None:
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    nn.init.normal_(classifier.weight, std=0.01)
    nn.init.zeros_(classifier.bias)


class DAFormerHead(nn.Module):
    """A DAFormer decoder and its 1x1 classifier alone (HRDA's scale attention: ``DAFormer.scale_attention_head``):
    the encoder's four levels (list of float [B, c_i, H / s_i, W / s_i], s_i = 4 .. 32) -> float
    [B, classes, H / 4, W / 4]. Arguments as ``DAFormerDecoder``'s, ``classes`` the classifier's outputs."""

    def __init__(self, encoder_channels: Sequence[int], classes: int, decoder_channels: int = 256,
                 dilations: Sequence[int] = (1, 6, 12, 18), dropout: float = 0.1,
                 fusion: Literal["aspp", "conv"] = "conv") -> None:
        super().__init__()
        self.decoder = DAFormerDecoder(encoder_channels, decoder_channels, dilations, dropout, fusion)
        self.segmentation_head = nn.Sequential(nn.Conv2d(decoder_channels, classes, 1))
        initialize(self.decoder, self.classifier)

    @property
    def classifier(self) -> nn.Conv2d:
        return self.segmentation_head[0]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.segmentation_head(self.decoder(features))


class DAFormer(nn.Module):
    """DAFormer's network: float [B, 3, H, W] (normalized) -> logits float [B, classes, H, W].

    Args:
        encoder_name: an smp encoder with five levels; DAFormer uses ``mit_b5`` (``mit_b0`` .. ``mit_b5``).
        encoder_weights: smp's weight name (``imagenet``) or None.
        classes: number of output channels.
        decoder_channels, decoder_dilations, decoder_dropout: see ``DAFormerDecoder``.

    Like smp's models it holds an ``encoder`` (list of features, the deepest last), a ``decoder`` and a
    ``segmentation_head`` whose [0] is the classifier; H and W multiples of 32 (``output_stride``). Its logits
    are computed at stride 4 (``logit_stride``), then upsampled.
    """

    output_stride = 32
    logit_stride = 4

    def __init__(self, encoder_name: str = "mit_b5", encoder_weights: str | None = None, classes: int = 19,
                 decoder_channels: int = 256, decoder_dilations: Sequence[int] = (1, 6, 12, 18),
                 decoder_dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = smp.encoders.get_encoder(encoder_name, in_channels=3, depth=5, weights=encoder_weights)
        self.decoder = DAFormerDecoder(self.encoder.out_channels[-4:], decoder_channels, tuple(decoder_dilations),
                                       decoder_dropout)
        self.segmentation_head = nn.Sequential(nn.Conv2d(decoder_channels, classes, 1))
        initialize(self.decoder, self.classifier)

    @property
    def classifier(self) -> nn.Conv2d:
        return self.segmentation_head[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, classes, H, W], the encoder's deepest features [B, D, H/32, W/32]) from one pass."""
        features = self.encoder(x)[-4:]
        logits = self.segmentation_head(self.decoder(features))
        return nnf.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False), features[-1]

    def scale_attention_head(self) -> DAFormerHead:
        """HRDA's scale attention for this net: a fresh ``DAFormerHead`` on the same four encoder levels, with this
        decoder's width, dropout and classes, its fusion a 1x1 convolution (``fusion="conv"``)."""
        return DAFormerHead([e.in_channels for e in self.decoder.embed], self.classifier.out_channels,
                            self.classifier.in_channels, dropout=self.decoder.dropout.p, fusion="conv")
