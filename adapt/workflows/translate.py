"""``adapt translate``: write a folder dataset translated by one generator of a translator checkpoint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from adapt.data.folder import FolderDataset
from adapt.checkpoints import load_translator
from adapt.errors import ConfigError
from adapt.nets.translator import translate_padded


def translate_folder(checkpoint: str | Path, direction: str, input_root: str | Path, output_root: str | Path,
                     batch_size: int = 1, device: str = "cpu") -> int:
    """Translate every image of ``input_root`` (folder format) into ``output_root/images/NAME.png`` and copy
    ``labels/``, ``classes.yaml`` and ``splits/`` along, so the output is a folder dataset with the same labels.

    The output is built in ``output_root.partial`` and renamed when complete, so an interrupted run never leaves
    a folder that looks finished. Returns the number of images written.
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
