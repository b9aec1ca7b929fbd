"""Adaptation at test time from target images alone: AdaBN and TENT (``adapt tta``).

- **AdaBN** (Li et al. 2016): every BatchNorm layer's running mean and variance are recomputed on the target
  images (one pass, every image weighing the same, the rest of F in eval mode); no weight changes.
- **TENT** (Wang et al. 2021): BatchNorm's affine weights and biases, and nothing else, are trained to minimise the
  mean per-pixel entropy of F's softmax on target batches (BatchNorm normalizing with batch statistics, as TENT
  does), then the running statistics are recomputed as in AdaBN so that F can be evaluated in eval mode.

The result is a segmenter checkpoint with the input's hyperparameters and new weights, written atomically, so
``adapt evaluate`` scores it like any other. Images are cropped at the top left to multiples of F's output
stride (32; a ViT's patch size), so no padding enters the statistics.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset

from adapt.checkpoints import SEGMENTER_KIND, load_segmenter
from adapt.data.datasets import DatasetKind, open_dataset
from adapt.errors import ConfigError, DataError
from adapt.files import atomic_save
from adapt.inference import Accelerator, crop_to_multiple, torch_device
from adapt.losses import entropy
from adapt.nets.segmenter import Segmenter, batch_norms


def _statistics_mode(segmenter: torch.nn.Module) -> list[_BatchNorm]:
    """Eval mode for all but BatchNorm, which normalizes with (and records) batch statistics."""
    layers = batch_norms(segmenter)
    if not layers:
        raise ConfigError("this F has no BatchNorm layers: AdaBN and TENT adapt BatchNorm, so they cannot help it")
    segmenter.eval()
    for layer in layers:
        layer.train()
    return layers


def statistics_loader(dataset: Dataset, batch_size: int) -> DataLoader:
    """Every image of ``dataset`` once, in order, in near-equal batches of at most ``batch_size`` (31 images at 8:
    8, 8, 8, 7): no short last batch, and with 2 or more images no batch of one (BatchNorm layers on pooled
    features, like DeepLabV3's ASPP pooling, need 2 values per channel), so an odd count at ``batch_size`` 2 ends
    with a batch of 3."""
    count = max(1, min(math.ceil(len(dataset) / batch_size), len(dataset) // 2))
    return DataLoader(dataset, batch_sampler=[b.tolist() for b in torch.arange(len(dataset)).tensor_split(count)])


@torch.no_grad()
def adabn(segmenter: Segmenter, loader: DataLoader) -> None:
    """Replace every BatchNorm layer's running statistics by those of the images of ``loader``, every image
    weighing the same: before a batch of n_b images each layer's momentum is n_b / (n_seen + n_b), so the running
    mean ends as the image-weighted mean of the batch means and the running variance as the image-weighted mean
    of the (unbiased) batch variances; the layers' momenta are restored after. Weights untouched; ``segmenter``
    ends in eval mode. ``loader``: batches ``{"image": float [B, 3, H, W]}`` (``statistics_loader``)."""
    layers = _statistics_mode(segmenter)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
    device, seen = next(segmenter.parameters()).device, 0
    for batch in loader:
        images = batch["image"]
        for layer in layers:
            layer.momentum = len(images) / (seen + len(images))
        segmenter(crop_to_multiple(images.to(device), segmenter.output_stride))
        seen += len(images)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    segmenter.eval()


def tent(segmenter: Segmenter, loader: DataLoader, steps: int, lr: float = 1e-3,
         statistics: DataLoader | None = None) -> list[float]:
    """``steps`` Adam steps on BatchNorm's affine parameters minimising the mean softmax entropy (nats) of the
    target batches of ``loader`` (cycled), then ``adabn`` over ``statistics`` (default: ``loader``; best a
    ``statistics_loader``). Returns the entropy before each step."""
    layers = _statistics_mode(segmenter)
    params = [p for layer in layers for p in (layer.weight, layer.bias) if p is not None]
    if not params:
        raise ConfigError("this F's BatchNorm layers have no affine parameters for TENT to train; use adabn")
    trainable = [p.requires_grad for p in segmenter.parameters()]
    segmenter.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    device, entropies = next(segmenter.parameters()).device, []
    while len(entropies) < steps:
        for batch in loader:
            logits = segmenter(crop_to_multiple(batch["image"].to(device), segmenter.output_stride))
            mean_entropy = entropy(logits).mean()
            optimizer.zero_grad()
            mean_entropy.backward()
            optimizer.step()
            entropies.append(float(mean_entropy.detach()))
            if len(entropies) == steps:
                break
    for p, flag in zip(segmenter.parameters(), trainable):
        p.requires_grad_(flag)
    adabn(segmenter, statistics or loader)
    return entropies


def adapt_checkpoint(checkpoint: str, root: str, output: str, method: Literal["adabn", "tent"] = "adabn",
                     split: str | None = None, kind: DatasetKind = "folder", steps: int = 50, lr: float = 1e-3,
                     batch_size: int = 8, seed: int = 0, accelerator: Accelerator = "cpu",
                     weights_only: bool = True) -> dict:
    """Adapt F to target images at test time, without labels: AdaBN (BatchNorm statistics) or TENT (+ entropy).

    The F of ``checkpoint`` is adapted to the (unlabelled) images of ``root`` and written to ``output``, an F
    checkpoint ``adapt evaluate`` scores like any other. Returns the record stored in it under
    ``test_time_adaptation`` (method, data, steps, entropies for TENT, output).

    Args:
        checkpoint: an F .ckpt written by ``adapt fit``.
        root: target images (labels, if any, are not read).
        output: the adapted F's .ckpt (a new file).
        method: adabn or tent.
        split: split list of ``root`` (default: all images).
        kind: layout of ``root``: folder, gta5, cityscapes, synthia, acdc, darkzurich, carla or carla_legacy.
        steps: TENT: Adam steps on BatchNorm's affine parameters.
        lr: TENT: learning rate.
        batch_size: target images per batch (at least 2: BatchNorm needs a batch); the statistics pass splits
            the images into near-equal batches of at most this many, never one of a single image (3 images at 2:
            one batch of 3).
        seed: the order of TENT's target batches (an experiment stage passes the run's seed).
        accelerator: where F adapts: cpu (default), auto (cuda when available), gpu / cuda or mps.
        weights_only: read the checkpoint as tensors and plain values only (false: only for files you trust).
    """
    if method not in ("adabn", "tent"):
        raise ConfigError(f"--method: {method!r}; choose adabn or tent")
    if steps < 1 or batch_size < 2:
        raise ConfigError("--steps must be at least 1 and --batch_size at least 2 (BatchNorm needs a batch)")
    output = Path(output)
    if output.exists():
        raise ConfigError(f"--output: {output} exists; give a new path (adapt never overwrites a checkpoint)")
    loaded = load_segmenter(checkpoint, "--checkpoint", weights_only)
    dataset = open_dataset(kind, str(root), split, labels=False)
    if len(dataset) < 2:
        raise DataError(f"--root {root}: {len(dataset)} target image(s); {method} needs at least 2 (BatchNorm "
                        "needs a batch)")
    # TENT's steps: shuffled batches, a short last one dropped (BatchNorm trains on full batches); the statistics
    # (AdaBN, and TENT's last pass) read every image once, in near-equal batches, each image weighing the same
    steps_loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
                              generator=torch.Generator().manual_seed(seed))
    every_image = statistics_loader(dataset, batch_size)
    segmenter = loaded.segmenter.to(torch_device(accelerator))
    record = {"method": method, "root": str(root), "split": split, "kind": kind, "images": len(dataset),
              "checkpoint": str(checkpoint), "output": str(output)}
    if method == "adabn":
        adabn(segmenter, every_image)
    else:
        record.update(steps=steps, lr=lr, seed=seed, entropies=tent(segmenter, steps_loader, steps, lr, every_image))
    ckpt = dict(loaded.checkpoint, kind=SEGMENTER_KIND)  # an F checkpoint, also from one older than kinds
    state = {f"segmenter.{k}": v.cpu() for k, v in segmenter.state_dict().items()}
    ckpt["state_dict"] = {**ckpt["state_dict"], **state}
    for key in ("optimizer_states", "lr_schedulers", "loops", "callbacks"):  # weights only: not resumable
        ckpt.pop(key, None)
    ckpt["test_time_adaptation"] = record
    atomic_save(ckpt, output)
    return record
