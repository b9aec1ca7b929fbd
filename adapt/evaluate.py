"""Evaluate a trained segmenter checkpoint on a labelled folder dataset and write metrics.json."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from adapt.data.datamodule import open_dataset
from adapt.data.labels import DataError
from adapt.nets.segmenter import ConfigError
from adapt.report import per_class_table, write_json
from adapt.tasks.segmentation import SegmentationTask
from adapt.tasks.translation import load_generator

PROTOCOL_FULL = {"mode": "full", "description": "whole image at its own resolution, padded (replicate) to a "
                                                "multiple of 32 and cropped back; labels at full resolution"}


def load_segmentation_task(checkpoint: str | Path) -> SegmentationTask:
    """The SegmentationTask of a checkpoint, on the CPU, without fetching encoder weights again."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"--checkpoint: {path} not found; give the .ckpt a fit wrote (e.g. .../checkpoints/last.ckpt)")
    try:
        head = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:
        raise ConfigError(f"--checkpoint: {path} is not a readable checkpoint ({type(err).__name__}); "
                          "give the .ckpt a fit wrote") from None
    hparams = head.get("hyper_parameters", {}) if isinstance(head, dict) else {}
    if "state_dict" not in head or "class_names" not in hparams or "arch" not in hparams:
        raise ConfigError(f"--checkpoint: {path} is not a segmenter (SegmentationTask) checkpoint")
    return SegmentationTask.load_from_checkpoint(path, map_location="cpu", encoder_weights=None)


def evaluate(checkpoint: str | Path, root: str | Path, split: str | None = None, out: str | Path | None = None,
             batch_size: int = 4, num_workers: int = 0, accelerator: str = "auto", verbose: bool = True,
             translator: str | Path | None = None, kind: str = "folder") -> dict:
    """Score ``checkpoint`` on the labelled folder dataset ``root`` (one confusion matrix over the split); with
    ``translator`` (a TranslationTask checkpoint) score F(g_ts(x_t)) instead of F(x_t). ``kind``: the dataset
    layout (``folder``, ``gta5``, ``cityscapes``; see ``adapt.data.datamodule.open_dataset``).

    Returns the metrics dict written to ``out/metrics.json``: ``miou``, ``per_class_iou`` (class -> percent or
    None), ``pixel_accuracy`` (percent), ``num_images``, ``protocol``, ``checkpoint``, ``root``, ``split``.
    """
    task = load_segmentation_task(checkpoint)
    if translator is not None:
        task.set_eval_translator(load_generator(translator, "target-to-source"))
    dataset = open_dataset(kind, str(root), split, labels=True)
    if list(dataset.classes.names) != task.class_names:
        raise DataError(f"{root}: classes {list(dataset.classes.names)} do not match the "
                        f"checkpoint's {task.class_names}; evaluate on a dataset with the model's class list")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.test(task, dataloaders=loader, verbose=False)
    metrics = dict(task.test_results, num_images=len(dataset), protocol=PROTOCOL_FULL,
                   checkpoint=str(checkpoint), translator=None if translator is None else str(translator),
                   root=str(root), kind=kind, split=split)
    out = Path(out) if out is not None else Path(checkpoint).parent.parent / "evaluate" / Path(root).name
    write_json(out / "metrics.json", metrics)
    if verbose:
        title = f"{Path(root).name}{f' [{split}]' if split else ''}: {len(dataset)} images"
        print(per_class_table(metrics, title))
        print(f"metrics: {out / 'metrics.json'}")
    return metrics
