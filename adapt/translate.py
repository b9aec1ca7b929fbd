"""``adapt translate``: write a folder dataset translated by one generator of a translator checkpoint;
``adapt fda``: write a training-free Fourier translator checkpoint (reference images of both domains)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from adapt.data.datamodule import open_dataset
from adapt.data.folder import FolderDataset
from adapt.nets.fourier import read_bank, write_fda_checkpoint
from adapt.nets.segmenter import ConfigError
from adapt.nets.translator import translate_padded
from adapt.tasks.translation import domain_name, load_generator


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
    generator = load_generator(checkpoint, direction).to(device)
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


def fda_checkpoint(output: str | Path, source_root: str, target_root: str, beta: float = 0.01, count: int = 32,
                   size: tuple[int, int] = (256, 512), source_kind: str = "folder", target_kind: str = "folder",
                   source_split: str | None = None, target_split: str | None = None, seed: int = 0) -> dict:
    """Write an FDA translator checkpoint to ``output`` (a new file): ``count`` images of each domain, drawn by
    ``seed`` and resized to ``size``, as the reference banks (labels are not read). Returns its record."""
    output = Path(output)
    if output.exists():
        raise ConfigError(f"--output: {output} exists; give a new file name (nothing is overwritten)")
    if not 0 <= beta < 0.5 or count < 1 or min(size) < 8:
        raise ConfigError(f"--beta {beta} must lie in [0, 0.5), --count {count} be >= 1 and --size {size} >= 8 8")
    banks = {name: read_bank(open_dataset(kind, root, split, labels=False), count, size, seed)
             for name, kind, root, split in (("source", source_kind, source_root, source_split),
                                             ("target", target_kind, target_root, target_split))}
    record = {"beta": beta, "size": list(size), "seed": seed, "source_root": str(source_root),
              "target_root": str(target_root), "source_split": source_split, "target_split": target_split,
              "source_images": len(banks["source"]), "target_images": len(banks["target"]),
              "domains": {"source": domain_name(source_root), "target": domain_name(target_root)}}
    output.parent.mkdir(parents=True, exist_ok=True)
    write_fda_checkpoint(output, banks["source"], banks["target"], beta, record)
    return record
