"""``adapt translate``: write a folder dataset translated by one generator of a translator checkpoint."""

from __future__ import annotations

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
from adapt.files import publish_folder
from adapt.inference import Accelerator, torch_device
from adapt.nets.translator import translate_padded


def translate_folder(checkpoint: str, direction: Literal["source-to-target", "target-to-source"], input: str,
                     output: str, batch_size: int = 1, accelerator: Accelerator = "cpu") -> int:
    """Translate a folder dataset with one generator of a translator checkpoint (T, or an FDA translator).

    Every image of ``input`` goes to ``output/images/NAME.png``; ``labels/``, ``classes.yaml`` and
    ``splits/`` are copied along, so the output is a folder dataset with the same labels. It is built in
    ``output.partial-<pid>`` and renamed when complete (``adapt.files.publish_folder``): an interrupted or
    failed run leaves no output folder (nothing that looks finished). Returns the number of images written.

    Args:
        checkpoint: a translator .ckpt (``adapt fit`` of a translation recipe, or ``adapt fda``).
        direction: source-to-target (g_st) or target-to-source (g_ts).
        input: the folder dataset to translate.
        output: a new folder: translated images and copied labels.
        batch_size: images per forward pass.
        accelerator: where T runs: cpu (default), auto (cuda when available), gpu / cuda or mps.
    """
    output_root, input_root = Path(output), Path(input)
    device = torch_device(accelerator)
    if output_root.exists():
        raise ConfigError(f"--output: {output_root} exists; give a new folder (nothing is overwritten)")
    generator = load_translator(checkpoint, direction, what="--checkpoint").to(device)
    dataset = FolderDataset(input_root, labels=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    with publish_folder(output_root) as partial, torch.no_grad():
        (partial / "images").mkdir()
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
    return len(dataset)
