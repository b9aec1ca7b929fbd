"""The segmenter F: an smp model (or an FCN, DAFormer or ViT net on an smp encoder) that normalizes its own input.

``Segmenter(x)``: float [B, 3, H, W] in [0, 1] -> logits float [B, num_classes, H, W]. H and W must be multiples
of ``segmenter.output_stride`` (32; a plain ViT's patch size, 14 for DINOv2); ``adapt.inference.predict_padded``
pads arbitrary sizes. The input statistics (its encoder's pretraining mean and std) are buffers saved with F, so
every tool that loads F normalizes alike.
"""

from __future__ import annotations

import inspect
import os
import socket
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.base import SegmentationModel
from torch import nn
from torch.nn import functional as nnf

from adapt.errors import ConfigError
from adapt.nets.daformer import DAFormer
from adapt.nets.pretrained import (IMAGENET_MEAN, IMAGENET_STD, WEIGHT_FILES, encoder_file_state, input_statistics,
                                   install_hint, map_efficientnet_lite, packaged_state)
from adapt.nets.vit import DPT, ViTUPerNet, is_plain_vit


class FCN(nn.Module):
    """FCN-32s style: an smp encoder, a 3x3 conv head on its deepest features, bilinear upsampling to the input.

    smp has no FCN; this is the torchvision ``FCNHead`` design on any smp encoder.
    """

    def __init__(self, encoder_name: str, encoder_weights: str | None, classes: int,
                 decoder_dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = smp.encoders.get_encoder(encoder_name, in_channels=3, depth=5, weights=encoder_weights)
        channels = self.encoder.out_channels[-1]
        hidden = max(channels // 4, 32)
        self.head = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
                                  nn.ReLU(inplace=True), nn.Dropout(decoder_dropout), nn.Conv2d(hidden, classes, 1))

    @property
    def classifier(self) -> nn.Conv2d:
        return self.head[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, classes, H, W], the encoder's deepest features [B, D, H/32, W/32]) from one pass."""
        deepest = self.encoder(x)[-1]
        return nnf.interpolate(self.head(deepest), size=x.shape[-2:], mode="bilinear", align_corners=False), deepest


# arch -> builder(encoder_name=, encoder_weights=, classes=, **kwargs); ``upernet`` on a plain ViT: ViTUPerNet
ARCHS = {"unet": smp.Unet, "fpn": smp.FPN, "deeplabv3plus": smp.DeepLabV3Plus, "fcn": FCN, "segformer": smp.Segformer,
         "upernet": smp.UPerNet, "dpt": DPT, "daformer": DAFormer}


class Segmenter(nn.Module):
    """Normalization (the encoder's pretraining mean/std, as saved buffers) followed by the network.

    Args:
        net: maps a normalized float [B, 3, H, W] to logits [B, C, H, W].
        num_classes: C.
        mean, std: per-channel input statistics for [0, 1] images (``input_statistics(encoder_name)``).
        output_stride: what H and W must be multiples of (32; a plain ViT's patch size), what
            ``adapt.inference`` pads to.
    """

    def __init__(self, net: nn.Module, num_classes: int, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, output_stride: int = 32) -> None:
        super().__init__()
        self.net, self.num_classes, self.output_stride = net, num_classes, int(output_stride)
        self.memory_format = torch.contiguous_format
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.multi_resolution = None  # HRDA's part of F (adapt.nets.hrda), added by enable_multi_resolution

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        """Checkpoints written before the statistics were saved hold no ``mean`` / ``std``: keep the built ones
        (ImageNet's, which every F of those versions used)."""
        missing = args[2]  # (local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        if self.multi_resolution is not None and any(k.startswith(prefix + "multi_resolution.head.")
                                                     for k in state_dict):
            raise ConfigError("checkpoint: its HRDA scale attention is adapt's earlier small head on the decoder "
                              "output (multi_resolution.head.*), replaced by HRDA's head on the context's encoder "
                              "features; retrain it, or use the adapt version that wrote it")
        super()._load_from_state_dict(state_dict, prefix, *args)
        for name in ("mean", "std"):
            if prefix + name in missing:
                missing.remove(prefix + name)

    @property
    def classifier(self) -> nn.Conv2d:
        """The last layer: a 1x1 (smp: any k) convolution with one output channel per class."""
        return self.net.segmentation_head[0] if isinstance(self.net, SegmentationModel) else self.net.classifier

    def to_channels_last(self) -> "Segmenter":
        """Keep weights and (from now on) inputs in NHWC order, which tensor-core convolutions prefer."""
        self.memory_format = torch.channels_last
        return self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.multi_resolution is not None:  # HRDA: context + sliding detail windows, fused
            return self.multi_resolution.predict(self, x)
        return self.single_scale(x)

    def single_scale(self, x: torch.Tensor) -> torch.Tensor:
        """F's plain pass at the input's resolution: float [B, 3, H, W] in [0, 1] -> logits [B, C, H, W]."""
        return self.net(self.normalize(x))

    # --- HRDA (adapt.nets.hrda): an optional part of F, saved with its weights as multi_resolution.* ---
    def enable_multi_resolution(self, context_scale: float = 0.5,
                                detail_crop: tuple[int, int] = (512, 512)) -> "Segmenter":
        """Add HRDA's scale-attention head (``hrda.scale_attention_head``, on the context's encoder features); from
        then on ``forward`` is HRDA's inference (``MultiResolution.predict``): context at ``context_scale``,
        overlapping full-resolution windows of ``detail_crop``, fused by the attention at stride ``logit_stride``."""
        from adapt.nets.hrda import MultiResolution, scale_attention_head

        head, classifier = scale_attention_head(self)
        self.multi_resolution = MultiResolution(head, classifier, context_scale, detail_crop, self.output_stride,
                                                self.logit_stride)
        return self.to(self.mean.device)

    @property
    def logit_stride(self) -> int:
        """The stride of ``decode``'s logits, where HRDA fuses the scales: DAFormer's 4 (its classifier runs at
        stride 4); 1 for the other nets (``decode`` returns their logits at the input's size)."""
        return int(getattr(self.net, "logit_stride", 1))

    def encode(self, x: torch.Tensor):
        """F's encoder on float [B, 3, H, W] in [0, 1] (normalized here): what ``decode`` reads (smp encoders: the
        list of levels, the deepest last; plain ViTs: (token grids, tokens))."""
        x = self.normalize(x)
        return self.net.encoder.forward_tokens(x) if isinstance(self.net, (DPT, ViTUPerNet)) else self.net.encoder(x)

    def deepest(self, features) -> torch.Tensor:
        """The deepest level of ``encode``'s ``features`` (what ``forward_features`` returns)."""
        return features[0][-1] if isinstance(self.net, (DPT, ViTUPerNet)) else features[-1]

    def decode(self, features, size: tuple[int, int], head: nn.Module | None = None) -> torch.Tensor:
        """Logits float [B, C, H / logit_stride, W / logit_stride] of ``encode``'s ``features`` of an input of
        ``size`` (H, W), by F's decoder and classifier or by ``head`` (HRDA's attention). F's forward is
        these logits upsampled (bilinear) to the input."""
        net, size = (self.net if head is None else head), (int(size[0]), int(size[1]))
        if isinstance(self.net, DAFormer):
            return net.segmentation_head(net.decoder(features[-4:]))
        if isinstance(self.net, FCN):
            logits = net.head(features[-1])
        elif isinstance(self.net, (DPT, ViTUPerNet)):
            logits = net.segmentation_head(net.decode(*features, size))
        else:  # smp: decoder -> head (whose upsampling reaches the input's size)
            logits = net.segmentation_head(net.decoder(features))
        return logits if logits.shape[-2:] == size else nnf.interpolate(logits, size=size, mode="bilinear",
                                                                         align_corners=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float [B, 3, H, W] in [0, 1] -> the encoder's input (standardized, in F's memory format)."""
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, C, H, W], the encoder's deepest features [B, D, H/32, W/32]; a ViT's [B, D, H/p, W/p])
        from one pass."""
        if not isinstance(self.net, SegmentationModel):  # FCN, DAFormer, the ViT nets
            return self.net.forward_features(self.normalize(x))
        features = self.net.encoder(self.normalize(x))  # smp: encoder -> decoder -> head, as its forward
        return self.net.segmentation_head(self.net.decoder(features)), features[-1]


def batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """``module``'s BatchNorm layers (torch's, timm's and the CPU SyncBatchNorm alike), in ``modules()`` order."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _weights_cached(encoder_name: str, encoder_weights: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    settings = smp.encoders.encoders.get(encoder_name, {}).get("pretrained_settings", {}).get(encoder_weights)
    if not settings or "repo_id" not in settings:
        return False
    found = try_to_load_from_cache(settings["repo_id"], "model.safetensors", revision=settings.get("revision"))
    return isinstance(found, str)


def build_segmenter(arch: str = "unet", encoder_name: str = "resnet18", encoder_weights: str | None = None,
                    num_classes: int = 19, **kwargs) -> Segmenter:
    """Build F.

    Args:
        arch: ``unet``, ``fpn``, ``deeplabv3plus``, ``segformer``, ``upernet`` (smp's), ``fcn``, ``daformer``
            (``adapt.nets.daformer``; DAFormer's: ``mit_b5``) or ``dpt`` (smp's DPT decoder on a plain timm ViT,
            ``adapt.nets.vit``). ``upernet`` on a plain ViT (``tu-vit_...``) is ``adapt.nets.vit.ViTUPerNet``.
        encoder_name: any smp encoder (``resnet18``, ``resnet50``, ``mit_b2``, ``tu-...``); ``dpt`` takes plain
            timm ViTs only (``tu-vit_small_patch14_dinov2``, ``tu-vit_base_patch14_dinov2.lvd142m``,
            ``tu-vit_large_patch14_dinov2.lvd142m``), whose inputs need sides that are multiples of the patch size.
        encoder_weights: smp's weight name (``imagenet``), a local weights file (``.pth``, ``.pt``, ``.bin``,
            ``.safetensors``), or None (random initialization). ``imagenet`` for ``timm-tf_efficientnet_lite0/1/2``
            comes from the installed registry package (``adapt.nets.pretrained``) with no hub; other encoders use
            smp's hub path. A file holds the encoder's state dict (plain or under ``state_dict`` / ``model``) in
            smp's naming, as SegFormer's official release (``mit_b0.pth`` ... ``mit_b5.pth`` for ``mit_b*``), or,
            for ``tu-`` encoders, in timm's naming or DINOv2's release naming (``dinov2_vits14_pretrain.pth``,
            converted by timm); names and shapes are checked (``adapt.nets.pretrained.encoder_file_state``).
        num_classes: number of output channels (smp calls it ``classes``).
        kwargs: further arguments of the smp model, by smp's names (``decoder_dropout``, ``decoder_channels``...);
            ``fcn`` takes ``decoder_dropout``; ``daformer`` ``decoder_channels``, ``decoder_dilations``,
            ``decoder_dropout``; ViT nets pass unknown keys to ``timm.create_model`` (``img_size``...).
    """
    key = arch.lower().replace("_", "").replace("-", "")
    if key not in ARCHS:
        raise ConfigError(f"arch: unknown {arch!r}; choose one of {sorted(ARCHS)}")
    local_file = encoder_weights is not None and Path(encoder_weights).suffix in WEIGHT_FILES
    if local_file and not Path(encoder_weights).is_file():
        raise ConfigError(f"encoder_weights: file {encoder_weights} not found; give the path of an existing weights "
                          f"file ({', '.join(WEIGHT_FILES)}), a weight name such as imagenet, or null")
    packaged = packaged_state(encoder_name) if encoder_weights == "imagenet" else None
    hub_weights = None if local_file or packaged is not None else encoder_weights
    if hub_weights is not None and not encoder_name.startswith("tu-"):
        if not _weights_cached(encoder_name, hub_weights) and not _hub_reachable():
            hint = install_hint(encoder_name) if hub_weights == "imagenet" else ""
            raise ConfigError(
                f"encoder_weights: {hub_weights!r} weights for {encoder_name} are not in the Hugging Face cache and "
                f"the hub cannot be reached; {hint + ', or ' if hint else ''}set encoder_weights: null (random "
                "init), give a local encoder state-dict file, or download them once where the hub is reachable")
    builder = ViTUPerNet if key == "upernet" and is_plain_vit(encoder_name) else ARCHS[key]
    parameters = inspect.signature(builder).parameters.values()
    known = {p.name for p in parameters if p.kind is not p.VAR_KEYWORD}
    passes_on = any(p.kind is p.VAR_KEYWORD for p in parameters)
    unknown = sorted(set(kwargs) - (known - {"encoder_name", "encoder_weights", "classes"}))
    if unknown and not (passes_on and encoder_name.startswith("tu-")):  # unknown keys go to timm encoders only
        raise ConfigError(f"segmenter_kwargs: {arch} takes no {', '.join(unknown)}; its arguments: "
                          f"{', '.join(sorted(known - {'encoder_name', 'encoder_weights', 'classes'}))}")
    try:
        net = builder(encoder_name=encoder_name, encoder_weights=hub_weights, classes=num_classes, **kwargs)
    except KeyError as err:
        raise ConfigError(f"encoder_name: unknown {encoder_name!r} ({err}); see smp's list of encoders") from None
    except (OSError, ConnectionError) as err:  # huggingface_hub's LocalEntryNotFoundError is an OSError
        raise ConfigError(f"encoder_weights: could not fetch {hub_weights!r} weights for {encoder_name} ({err}); "
                          "set encoder_weights: null or give a local encoder state-dict file") from None
    if local_file:  # adapt / smp naming, official MiT release files, timm and DINOv2 files for tu- encoders
        timm_kwargs = {k: v for k, v in kwargs.items() if k not in known}
        net.encoder.load_state_dict(encoder_file_state(encoder_weights, net.encoder, encoder_name, timm_kwargs))
    if packaged is not None:
        net.encoder.load_state_dict(map_efficientnet_lite(packaged, net.encoder.state_dict()))
    return Segmenter(net, num_classes, *input_statistics(encoder_name), getattr(net, "output_stride", 32))


def load_matching(segmenter: Segmenter, state: dict[str, torch.Tensor], old_names: list[str],
                  new_names: list[str]) -> dict[str, list[str]]:
    """Initialize ``segmenter`` (classes ``new_names``) from another F's ``state`` (a Segmenter state dict, classes
    ``old_names``), matching classes by name: every tensor but the classifier's is copied (names and shapes must
    agree: same arch and encoder); the classifier's weight and bias rows of classes in both lists are copied to
    their new positions, classes new to ``new_names`` keep their fresh initialization, and classes only in
    ``old_names`` are dropped. HRDA's attention head (``multi_resolution.*``, per-class rows matched alike) keeps
    its fresh initialization where the state has none (a single-scale F starting an HRDA one). ``state`` is a whole
    Segmenter's (``init_from`` passes that of ``adapt.checkpoints.load_segmenter``'s F, which an older checkpoint
    without ``mean`` / ``std`` gets in ``Segmenter._load_from_state_dict``).
    Returns ``{"shared": [...], "new": [...], "dropped": [...]}`` (class names).
    """
    own = segmenter.state_dict()
    classifier = next(name for name, m in segmenter.named_modules() if m is segmenter.classifier)
    head = {f"{classifier}.weight", f"{classifier}.bias"}
    if segmenter.multi_resolution is not None:  # HRDA's attention: one output channel per class as well
        head |= {f"multi_resolution.attention.{segmenter.multi_resolution.classifier_name}.{p}"
                 for p in ("weight", "bias")}
    for key, value in own.items():
        if key in head:
            continue
        if key.startswith("multi_resolution.") and key not in state:  # HRDA's head, new to a single-scale F
            continue
        if key not in state or state[key].shape != value.shape:
            found = "missing" if key not in state else f"{tuple(state[key].shape)}, here {tuple(value.shape)}"
            raise ConfigError(f"init_from: the checkpoint's F does not fit this one at {key} ({found}); give an F "
                              "of the same arch, encoder_name and segmenter_kwargs")
        own[key] = state[key]
    rows = [(new_names.index(n), old_names.index(n)) for n in new_names if n in old_names]
    for key in head:
        if key in state:
            own[key] = own[key].clone()
            for new, old in rows:
                own[key][new] = state[key][old]
    segmenter.load_state_dict(own)
    return {"shared": [n for n in new_names if n in old_names], "new": [n for n in new_names if n not in old_names],
            "dropped": [n for n in old_names if n not in new_names]}
