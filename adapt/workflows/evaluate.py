"""Evaluate a trained segmenter checkpoint on labelled target sets: metrics.json and PNG reports per set.

Under an explicit protocol (``adapt.inference.make_protocol``: full, resize or slide, written into every report),
one confusion matrix and one set of calibration bins over the whole split give mIoU, per-class IoU, pixel accuracy
and ECE (per-image counts beside them let ``adapt compare`` put intervals on the mIoU); ``adapt.plots`` draws
per_class_iou.png, confusion_matrix.png, reliability.png and examples.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from adapt.checkpoints import domain_name, load_segmenter, load_translator
from adapt.cost import Cost, Tracker, as_cost
from adapt.data.datasets import DatasetKind, open_dataset
from adapt.data.folder import ImageLabelDataset
from adapt.errors import ConfigError, DataError
from adapt.inference import make_protocol
from adapt.metrics import ClassSubset, check_class_subsets
from adapt.plots import write_plots
from adapt.report import comparison_table, per_class_table, worst_classes_line, write_json
from adapt.tasks.segmentation import SegmentationTask
from adapt.workflows.score import score_predictions


def evaluate(checkpoint: str | Path, root: str | Path, split: str | None = None, out: str | Path | None = None,
             batch_size: int = 4, num_workers: int = 0, accelerator: str = "auto", verbose: bool = True,
             translator: str | Path | None = None, kind: str = "folder", protocol: dict | None = None,
             num_examples: int = 6, plots: bool = True, weights_only: bool = True,
             class_subsets: list[ClassSubset] | None = None, cost: Cost | None = Cost()) -> dict:
    """Score ``checkpoint`` on the labelled dataset ``root`` (one confusion matrix over the split); with
    ``translator`` (a TranslationTask checkpoint) score F(g_ts(x_t)) instead of F(x_t). ``kind``: the dataset
    layout (``folder``, ``gta5``, ``cityscapes``, ``synthia``, ...; see ``adapt.data.datasets.open_dataset``).
    ``protocol``: a ``adapt.inference.make_protocol`` dict (None: full resolution). ``plots``: write the PNG reports
    next to metrics.json, with the first ``num_examples`` samples in examples.png. ``class_subsets``: subset means
    to report besides the mIoU (``[synthia16, synthia13]``: ``miou_16``, ``miou_13``; None: those the checkpoint's
    task was given). ``cost``: how the scoring pass's ``cost`` is measured (``adapt.cost``; None: wall time only).

    Returns the metrics dict written to ``out/metrics.json``: ``miou``, ``per_class_iou`` (class -> percent or
    None), ``pixel_accuracy`` and ``ece`` (percent), ``calibration`` (bin edges, count, mean confidence and
    accuracy per bin), ``confusion_matrix`` (rows label, columns prediction), ``num_images``, ``protocol``,
    ``checkpoint``, ``translator``, ``root``, ``kind``, ``split``, ``per_image`` (each image's name and per-class
    intersection and union, labelled and correct pixels: ``adapt.intervals.per_image_record``, for bootstrap
    intervals and ``adapt compare``); with class subsets also their means and ``class_subsets`` (see
    ``adapt.metrics.summarize``); ``cost`` (``adapt.cost.Tracker.stop``).
    """
    task = _load(checkpoint, translator, protocol, [root], weights_only, class_subsets)
    out = Path(out) if out is not None else Path(checkpoint).parent.parent / "evaluate" / Path(root).name
    dataset = _open_checked(task, root, split, kind)
    return _evaluate_one(task, checkpoint, translator, dataset, root, split, kind, out, batch_size, num_workers,
                         accelerator, verbose, num_examples if plots else 0, plots, cost)


def evaluate_roots(checkpoint: str | Path, roots: list[str], splits: list[str | None] | None = None,
                   kinds: list[str] | None = None, out: str | Path | None = None, batch_size: int = 4,
                   num_workers: int = 0, accelerator: str = "auto", verbose: bool = True,
                   translator: str | Path | None = None, protocol: dict | None = None, num_examples: int = 6,
                   plots: bool = True, weights_only: bool = True,
                   class_subsets: list[ClassSubset] | None = None, cost: Cost | None = Cost()) -> dict:
    """``evaluate`` on several target sets: each into ``out/<root name>/`` (default ``out``: RUN/evaluate), one
    comparison table printed, ``out/summary.json`` = {root name: metrics}. ``splits`` and ``kinds``: one value for
    all roots or one per root."""
    splits, kinds = _per_root("--split", splits or [None], roots), _per_root("--kind", kinds or ["folder"], roots)
    out = Path(out) if out is not None else Path(checkpoint).parent.parent / "evaluate"
    task = _load(checkpoint, translator, protocol, roots, weights_only, class_subsets)
    # open (and so check) every set before scoring any: a bad last root fails at once, not after an hour
    datasets = [_open_checked(task, root, split, kind) for root, split, kind in zip(roots, splits, kinds)]
    summary = {}
    for name, dataset, root, split, kind in zip(_root_names(roots, splits), datasets, roots, splits, kinds):
        summary[name] = _evaluate_one(task, checkpoint, translator, dataset, root, split, kind, out / name,
                                      batch_size, num_workers, accelerator, verbose,
                                      num_examples if plots else 0, plots, cost)
        if verbose:
            print()
    write_json(out / "summary.json", summary)
    if verbose:
        print(f"== comparison ({task.eval_protocol['mode']} protocol; %)")
        print(comparison_table({n: {"mIoU": m["miou"], **_subset_columns(m), "pixel acc.": m["pixel_accuracy"],
                                    "ECE": m["ece"]} for n, m in summary.items()}, first="root"))
        print(f"summary: {out / 'summary.json'}")
    return summary


def _subset_columns(metrics: dict) -> dict:
    """``{"mIoU16": value, "mIoU13": value}``: the class-subset means of a metrics dict, as table columns."""
    return {f"mIoU{len(note['classes'])}": metrics[note["metric"]]
            for note in metrics.get("class_subsets", {}).values()}


def _per_root(option: str, values: list, roots: list[str]) -> list:
    if len(values) == 1:
        return values * len(roots)
    if len(values) != len(roots):
        raise ConfigError(f"{option}: {len(values)} values for {len(roots)} roots; give one for all roots or a "
                          "list of one per root, in the same order")
    return list(values)


def _root_names(roots: list[str], splits: list[str | None]) -> list[str]:
    """Folder names for the roots' reports: the root's name, with the split and then a number if needed."""
    names = [Path(r).resolve().name or "root" for r in roots]
    names = [f"{n}-{s}" if s and names.count(n) > 1 else n for n, s in zip(names, splits)]
    return [f"{n}-{names[:i].count(n) + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _load(checkpoint: str | Path, translator: str | Path | None, protocol: dict | None, roots: list,
          weights_only: bool = True, class_subsets: list[str] | None = None) -> SegmentationTask:
    task = SegmentationTask.for_evaluation(load_segmenter(checkpoint, "--checkpoint", weights_only))
    if class_subsets is not None:
        task.class_subsets = check_class_subsets(class_subsets, task.class_names, "--class_subsets")
    if translator is not None:  # T must have been trained towards the sets it maps back to source style
        for root in roots:
            generator = load_translator(translator, "target-to-source", {"target": domain_name(root)})
        task.set_eval_translator(generator)
    try:  # a protocol dict from an experiment file is checked like the command line's options
        task.set_eval_protocol(make_protocol(**{k: protocol[k] for k in ("mode", "size", "window", "stride")
                                                if k in protocol}) if protocol else make_protocol("full"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return task


def _open_checked(task: SegmentationTask, root, split, kind) -> ImageLabelDataset:
    dataset = open_dataset(kind, str(root), split, labels=True)
    if list(dataset.classes.names) != task.class_names:
        raise DataError(f"{root}: classes {list(dataset.classes.names)} do not match the "
                        f"checkpoint's {task.class_names}; evaluate on a dataset with the model's class list")
    return dataset


def _evaluate_one(task: SegmentationTask, checkpoint, translator, dataset: ImageLabelDataset, root, split, kind,
                  out: Path, batch_size: int, num_workers: int, accelerator: str, verbose: bool, num_examples: int,
                  plots: bool, cost: Cost | None = Cost()) -> dict:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    trainer = pl.Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    task.num_examples = num_examples
    with Tracker(as_cost(cost), trainer.strategy.root_device) as tracker:
        trainer.test(task, dataloaders=loader, verbose=False)
    split = getattr(dataset, "split", split)  # the split the dataset read (cityscapes, acdc...: val when None)
    metrics = dict(task.test_results, num_images=len(dataset), protocol=dict(task.eval_protocol),
                   checkpoint=str(checkpoint), translator=None if translator is None else str(translator),
                   root=str(root), kind=kind, split=split, cost=tracker.record)
    write_json(out / "metrics.json", metrics)
    title = f"{Path(root).name}{f' [{split}]' if split else ''}"
    if plots:
        write_plots(out, metrics, task.class_names, dataset.classes.palette(), task.examples,
                    f"{title}, {task.eval_protocol['mode']}")
    task.examples = []
    if verbose:
        print(per_class_table(metrics, f"{title}: {len(dataset)} images, {task.eval_protocol['mode']} protocol"))
        print(worst_classes_line(metrics))
        print(f"metrics: {out / 'metrics.json'}{' (and PNG reports)' if plots else ''}")
    return metrics


def evaluate_command(root: str | list[str], checkpoint: str | None = None, predictions: str | None = None,
                     split: str | list[str | None] | None = None, kind: DatasetKind | list[DatasetKind] = "folder",
                     output: str | None = None, protocol: Literal["full", "resize", "slide"] = "full",
                     size: tuple[int, int] | None = None, window: tuple[int, int] | None = None,
                     stride: tuple[int, int] | None = None, translator: str | None = None,
                     id_type: Literal["label", "train"] = "label", examples: int = 6, plots: bool = True,
                     batch_size: int = 4, num_workers: int = 0, accelerator: str = "auto",
                     weights_only: bool = True, class_subsets: list[ClassSubset] | None = None,
                     cost: Cost | None = Cost()) -> dict:
    """Score a segmenter checkpoint, or the label PNGs of any model (``predictions``), on labelled datasets.

    Args:
        root: labelled dataset folder, or a list of them (``[A,B]``: each into OUT/ROOTNAME, one comparison table
            and OUT/summary.json).
        checkpoint: a .ckpt written by ``adapt fit`` (an F: segmentation or self-training).
        predictions: instead of ``checkpoint``: a folder of predicted label PNGs, DIR/NAME.png (Cityscapes:
            NAME*.png); one root.
        split: split list in ROOT/splits/ (default: all images; Cityscapes: train, val or test); one for all roots
            or a list, one per root.
        kind: dataset layout: folder, gta5, cityscapes, synthia, acdc, darkzurich, carla or carla_legacy; one for
            all roots or a list, one per root.
        output: folder for metrics.json and the PNG reports (default: RUN/evaluate/ROOTNAME; several roots:
            RUN/evaluate).
        protocol: full (the whole image, padded to a multiple of F's output stride), resize (input resized to
            ``size``, logits resized back) or slide (``window`` windows every ``stride``, logits averaged).
        size: (height, width) with ``protocol: resize``.
        window: (height, width) with ``protocol: slide``.
        stride: (height, width) with ``protocol: slide`` (default: half the window).
        translator: a translator .ckpt: score F(g_ts(x_t)), target images mapped to source style first.
        id_type: with ``predictions``: label ids (Cityscapes ids; folder: classes.yaml ids) or train indices.
        examples: images in examples.png (0: none).
        plots: write the PNG reports besides metrics.json.
        batch_size: images per evaluation step.
        num_workers: DataLoader worker processes.
        accelerator: Lightning's accelerator (auto, cpu, gpu, ...).
        weights_only: read checkpoints as tensors and plain values only; false runs the pickled code a checkpoint
            may hold: only for files you trust.
        class_subsets: class-subset means reported beside the mIoU, e.g. ``[synthia16,synthia13]``: the 16- and
            13-class means of SYNTHIA -> Cityscapes (``miou_16``, ``miou_13`` in metrics.json and the tables);
            default: those the checkpoint's task was given (none).
        cost: what scoring costs, in metrics.json's ``cost``: wall time, device hours, energy and emissions
            (codecarbon, offline): ``--cost.country_iso_code FRA`` or ``--cost.carbon_intensity G_PER_KWH`` for
            the grid (default: the world average); ``--cost null``: wall time and device hours only.
    """
    roots, splits, kinds = ([v] if not isinstance(v, list) else v for v in (root, split, kind))
    if (checkpoint is None) == (predictions is None):
        raise ConfigError("adapt evaluate: give --checkpoint CKPT (score a model) or --predictions DIR (score label "
                          f"PNGs); {'not both' if checkpoint else 'neither was given'}")
    if predictions is not None:
        if translator is not None:
            raise ConfigError("--translator needs --checkpoint; predictions are scored as they are")
        if protocol != "full" or size or window or stride:
            raise ConfigError("--protocol/--size/--window/--stride need --checkpoint; predictions are scored as "
                              "they are, at the labels' resolution")
        if len(roots) > 1 or len(kinds) > 1 or len(splits) > 1:
            raise ConfigError("--predictions scores one --root (one --split, one --kind)")
        return score_predictions(predictions, roots[0], kinds[0], splits[0], id_type, output,
                                 class_subsets=class_subsets)
    try:
        checked = make_protocol(protocol, size, window, stride)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if examples < 0:
        raise ConfigError(f"--examples: {examples}; give 0 or more")
    options = dict(batch_size=batch_size, num_workers=num_workers, accelerator=accelerator, translator=translator,
                   protocol=checked, num_examples=examples, plots=plots, weights_only=weights_only,
                   class_subsets=class_subsets, cost=as_cost(cost))
    if len(roots) == 1 and len(kinds) == 1 and len(splits) == 1:
        return evaluate(checkpoint, roots[0], splits[0], output, kind=kinds[0], **options)
    return evaluate_roots(checkpoint, roots, splits, kinds, output, **options)
