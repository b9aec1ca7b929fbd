"""``adapt predict``: segment a folder of unlabelled images (or a dataset split) with a trained F.

Every image goes through the F (and the optional translator, F(g_ts(x))) of a checkpoint under an explicit
protocol (``adapt.inference.make_protocol``), at its own height and width. The output folder is written as a
``OUTPUT.partial-<pid>`` sibling and renamed to OUTPUT only when every image and the manifest are written
(``adapt.files.publish_folder``): an interrupted run leaves no OUTPUT (or the old one, untouched).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from tqdm import tqdm

from adapt.checkpoints import domain_name, load_segmenter, load_translator
from adapt.data.cityscapes import CITYSCAPES_CLASSES, class_palette
from adapt.data.datasets import DatasetKind, open_dataset
from adapt.data.folder import image_to_tensor, read_image
from adapt.data.labels import lookup_table
from adapt.data.pairs import IMAGE_SUFFIXES
from adapt.errors import ConfigError, DataError
from adapt.files import publish_folder
from adapt.inference import Accelerator, make_protocol, predict, torch_device
from adapt.nets.translator import translate_padded
from adapt.plots import colorize, overlay
from adapt.report import write_json
from adapt.signals import Interrupted, sigterm_raises


def predict_folder(checkpoint: str, output: str, input: str | None = None, root: str | None = None,
                   kind: DatasetKind = "folder", split: str | None = None, translator: str | None = None,
                   protocol: Literal["full", "resize", "slide"] = "full", size: tuple[int, int] | None = None,
                   window: tuple[int, int] | None = None, stride: tuple[int, int] | None = None,
                   id_type: Literal["train", "label"] = "train", confidence: bool = False, overwrite: bool = False,
                   batch_size: int = 1, accelerator: Accelerator = "auto",
                   weights_only: bool = True) -> dict:
    """Segment unlabelled images with a segmenter checkpoint: label, colour and overlay PNGs per image.

    OUTPUT holds, for every image NAME (each PNG at the image's own height and width): ``labels/NAME.png``
    (uint8 [H, W] train indices 0..C-1, or Cityscapes label ids with ``--id_type label``), ``colors/NAME.png``
    (RGB: the official Cityscapes colours for the 19 Cityscapes classes, else adapt's default palette),
    ``overlays/NAME.png`` (the image blended with the colours), with ``--confidence true``
    ``confidence/NAME.png`` (uint8 [H, W]: the max softmax probability, 0..255 for 0..1), and
    ``predictions.json`` (checkpoint, translator, protocol, id_type, number of images, class names, palette),
    written last. Returns that manifest, with ``output`` added.

    Args:
        checkpoint: a .ckpt written by ``adapt fit`` (an F: segmentation or self-training).
        output: the folder to write (refused if it exists, unless ``overwrite``).
        input: a folder of images (.png/.jpg/.jpeg, any sizes, no labels); only its own files are read, not
            its subfolders. Give ``input`` or ``root``, not both.
        root: instead of ``input``: a dataset whose images (of ``split``) are segmented; its labels are not read.
        kind: the layout of ``root``: folder, gta5, cityscapes, synthia, acdc, darkzurich, carla or carla_legacy.
        split: with ``root``: a split list in ROOT/splits/ (folder), a list file (gta5) or train/val/test
            (cityscapes; default val).
        translator: a translator .ckpt: predict F(g_ts(x)), images mapped to source style first.
        protocol: full (the whole image, padded to a multiple of F's output stride), resize (input resized to
            ``size``, logits resized back) or slide (``window`` windows every ``stride``, logits averaged).
        size: (height, width) with ``protocol: resize``.
        window: (height, width) with ``protocol: slide``.
        stride: (height, width) with ``protocol: slide`` (default: half the window).
        id_type: what labels/NAME.png holds: train indices, or Cityscapes label ids (a model of the 19
            Cityscapes classes only).
        confidence: also write confidence/NAME.png.
        overwrite: replace an existing ``output`` (only once the new one is complete).
        batch_size: images per forward pass (consecutive images of the same size are batched).
        accelerator: where F runs: auto (cuda when available, else cpu), cpu, gpu / cuda or mps.
        weights_only: read checkpoints as tensors and plain values only; false runs the pickled code a checkpoint
            may hold: only for files you trust.
    """
    output = Path(output).absolute()
    items = _images(input, root, kind, split)
    checked = _protocol(protocol, size, window, stride)
    if batch_size < 1:
        raise ConfigError(f"--batch_size: {batch_size}; give 1 or more")
    if output.exists() and not (overwrite and output.is_dir()):
        raise ConfigError(f"--output: {output} exists; give a new folder, or --overwrite true to replace it"
                          if output.is_dir() else f"--output: {output} is a file; give a folder path")
    device = torch_device(accelerator)
    loaded = load_segmenter(checkpoint, "--checkpoint", weights_only)
    segmenter, names = loaded.segmenter, loaded.class_names
    cityscapes = names == list(CITYSCAPES_CLASSES.names)
    if id_type == "label" and not cityscapes:
        raise ConfigError(f"--id_type label: {checkpoint} predicts {len(names)} classes that are not the 19 "
                          "Cityscapes classes, which have no label ids; use --id_type train")
    generator = None
    if translator is not None:  # with --root, T must have been trained towards that set (as adapt evaluate checks)
        generator = load_translator(translator, "target-to-source",
                                    {"target": domain_name(root)} if root is not None else None).to(device)
    palette = class_palette(names)
    to_label = None  # uint8 [256]: train index -> Cityscapes label id, with --id_type label
    if id_type == "label":
        to_label = lookup_table(dict(enumerate(CITYSCAPES_CLASSES.ids)))
    manifest = {"checkpoint": str(checkpoint), "translator": None if translator is None else str(translator),
                "input": None if input is None else str(input), "root": None if root is None else str(root),
                "kind": None if root is None else kind, "split": split, "protocol": checked, "id_type": id_type,
                "confidence": confidence, "num_images": len(items), "class_names": names,
                "palette": palette.tolist()}
    try:
        with sigterm_raises(), publish_folder(output, overwrite) as partial:
            for folder in ("labels", "colors", "overlays", *(["confidence"] if confidence else [])):
                (partial / folder).mkdir()
            segmenter.to(device)
            for batch in _batches(items, batch_size):
                _write_batch(partial, batch, segmenter, generator, checked, palette, to_label, confidence, device)
            write_json(partial / "predictions.json", manifest)
    except KeyboardInterrupt as interrupt:  # Ctrl-C or SIGTERM; publish_folder has removed the partial folder
        raise Interrupted.after(interrupt, "adapt predict: interrupted; nothing written"
                                f"{'' if not output.exists() else f', {output} untouched'}") from None
    return dict(manifest, output=str(output))


def _images(input: str | None, root: str | None, kind: str, split: str | None) -> list[tuple[str, Path]]:
    """(name, image file) of every image to segment, in order; one-line errors for a wrong choice of inputs."""
    if (input is None) == (root is None):
        raise ConfigError("adapt predict: give --input DIR (a folder of images) or --root DATASET (with --kind, "
                          f"--split); {'not both' if input is not None else 'neither was given'}")
    if root is not None:
        dataset = open_dataset(kind, root, split, labels=False)
        return list(zip(dataset.names, dataset.images))
    if split is not None or kind != "folder":
        raise ConfigError("--split and --kind go with --root; --input takes every image of its folder")
    folder = Path(input)
    if not folder.is_dir():
        raise DataError(f"--input: {folder} is not a folder; give a folder of .png/.jpg images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"--input: no .png/.jpg images in {folder} (subfolders are not read; for a dataset "
                        "give --root and --kind)")
    stems = [p.stem for p in files]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:
        raise DataError(f"--input: {folder} has several images named {twins[0]} (e.g. .png and .jpg); their "
                        "outputs would collide: rename or remove one")
    return list(zip(stems, files))


def _protocol(mode: str, size, window, stride) -> dict:
    try:
        return make_protocol(mode, size, window, stride)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _batches(items: list[tuple[str, Path]], batch_size: int) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Lists of (name, uint8 [H, W, 3] RGB image) of up to ``batch_size`` consecutive images of one size, read as
    a progress bar (stderr) advances; a DataError naming the file for an unreadable image."""
    pending: list[tuple[str, np.ndarray]] = []
    for name, path in tqdm(items, desc="adapt predict", unit="image", file=sys.stderr):
        image = read_image(path)
        if pending and (len(pending) == batch_size or pending[0][1].shape != image.shape):
            yield pending
            pending = []
        pending.append((name, image))
    if pending:
        yield pending


@torch.no_grad()
def _write_batch(folder: Path, batch: list[tuple[str, np.ndarray]], segmenter: torch.nn.Module,
                 generator: torch.nn.Module | None, protocol: dict, palette: np.ndarray,
                 to_label: np.ndarray | None, confidence: bool, device: torch.device) -> None:
    """Segment images of one size and write their PNGs into ``folder``."""
    x = torch.stack([image_to_tensor(image) for _, image in batch]).to(device)  # float [B, 3, H, W] in [0, 1]
    if generator is not None:
        x = translate_padded(generator, x)  # x_ts: target content, source style
    probs = predict(segmenter, x, protocol, segmenter.output_stride).float().softmax(1)  # float [B, C, H, W]
    top, pred = probs.max(1)
    for (name, image), label, score in zip(batch, pred.cpu().numpy().astype(np.uint8), top.cpu().numpy()):
        _write_png(folder / "labels" / f"{name}.png", label if to_label is None else to_label[label])
        _write_png(folder / "colors" / f"{name}.png", colorize(label, palette))
        _write_png(folder / "overlays" / f"{name}.png", overlay(image, label, palette))
        if confidence:
            _write_png(folder / "confidence" / f"{name}.png", (score * 255).round().astype(np.uint8))


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """uint8 [H, W] (grey) or [H, W, 3] (RGB) as a PNG."""
    if pixels.ndim == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), pixels):
        raise DataError(f"{path}: could not write the PNG; check the disk space and permissions of the output")
