"""``adapt translate``: write a folder dataset translated by one generator of a translator checkpoint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from tqdm import tqdm

from adapt.checkpoints import load_translator
from adapt.data.folder import FolderDataset
from adapt.errors import ConfigError
from adapt.nets.translator import translate_padded


def translate_folder(checkpoint: str, direction: Literal["source-to-target", "target-to-source"], input_root: str,
                     output_root: str, batch_size: int = 1, device: str = "cpu") -> int:
    """Translate a folder dataset with one generator of a translator checkpoint (T, or an FDA translator).

    Every image of ``input_root`` goes to ``output_root/images/NAME.png``; ``labels/``, ``classes.yaml`` and
    ``splits/`` are copied along, so the output is a folder dataset with the same labels. It is built in
    ``output_root.partial`` and renamed when complete: an interrupted run never leaves a folder that looks
    finished. Returns the number of images written.

    Args:
        checkpoint: a translator .ckpt (``adapt fit`` of a translation recipe, or ``adapt fda``).
        direction: source-to-target (g_st) or target-to-source (g_ts).
        input_root: the folder dataset to translate.
        output_root: a new folder: translated images and copied labels.
        batch_size: images per forward pass.
        device: torch device (cpu, cuda, ...).
    """
    output_root, input_root = Path(output_root), Path(input_root)
    if output_root.exists():
        raise ConfigError(f"--output: {output_root} exists; give a new folder (nothing is overwritten)")
    generator = load_translator(checkpoint, direction).to(device)
    dataset = FolderDataset(input_root, labels=False)
    partial = output_root.with_name(output_root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "images").mkdir(parents=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    with torch.no_grad():
        for batch in tqdm(loader, desc=f"translate {direction}", unit="batch"):
            translated = translate_padded(generator, batch["image"].to(device)).clamp(0, 1)
            for name, image in zip(batch["name"], translated):
                pixels = (image.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
                cv2.imwrite(str(partial / "images" / f"{name}.png"), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
    for extra in ("labels", "splits"):
        if (input_root / extra).is_dir():
            shutil.copytree(input_root / extra, partial / extra)
    if (input_root / "classes.yaml").is_file():
        shutil.copy2(input_root / "classes.yaml", partial / "classes.yaml")
    os.replace(partial, output_root)
    return len(dataset)
