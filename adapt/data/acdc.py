"""The ETH Zurich adverse-condition sets in their download layouts: ACDC (Sakaridis et al. 2021) and Dark Zurich
(Sakaridis et al. 2019). Both anonymised RGB frames (``*_rgb_anon.png``) and Cityscapes *label ids*
(``*_gt_labelIds.png``, mapped to the 19 train ids by the Cityscapes table) under mirrored trees::

    ACDC         ROOT/rgb_anon/{fog,night,rain,snow}/{train,val,test}/GOPRxxxx/GOPRxxxx_frame_xxxxxx_rgb_anon.png
                 ROOT/gt/{fog,night,rain,snow}/{train,val}/GOPRxxxx/GOPRxxxx_frame_xxxxxx_gt_labelIds.png
    Dark Zurich  ROOT/rgb_anon/{train,val,test}/{day,twilight,night}/GOPRxxxx/GOPRxxxx_frame_xxxxxx_rgb_anon.png
                 ROOT/gt/val/night/GOPR0356/GOPR0356_frame_xxxxxx_gt_labelIds.png     (val: 50 labelled night frames)

A split names the folders under ``rgb_anon/`` in the tree's own order (see ``acdc_folders``, ``darkzurich_folders``);
a level left out means all of it: ACDC ``val`` (all four conditions), ``night/val``, ``fog,snow/val``; Dark Zurich
``train/night`` (the usual unlabelled target), ``val/night`` or ``val`` (the labelled frames), ``train`` (day, twilight
and night). Samples are named by stem (``GOPR0356_frame_000321``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from adapt.data.cityscapes import PairedDataset
from adapt.data.pairs import Tree, pair_files
from adapt.errors import DataError

IMAGE_SUFFIX, LABEL_SUFFIX = "_rgb_anon.png", "_gt_labelIds.png"
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")
DARKZURICH_TIMES = ("day", "twilight", "night")
ACDC_LAYOUT = ("ACDC needs ROOT/rgb_anon/{fog,night,rain,snow}/{train,val,test}/GOPRxxxx/*_rgb_anon.png and "
               "ROOT/gt/{condition}/{split}/GOPRxxxx/*_gt_labelIds.png (unpack rgb_anon_trainvaltest.zip and "
               "gt_trainval.zip into ROOT)")
DARKZURICH_LAYOUT = ("Dark Zurich needs ROOT/rgb_anon/{train,val,test}/{day,twilight,night}/GOPRxxxx/*_rgb_anon.png "
                     "and, for val, ROOT/gt/val/night/GOPRxxxx/*_gt_labelIds.png (unpack Dark_Zurich_train_anon.zip "
                     "and Dark_Zurich_val_anon.zip into ROOT)")


def _choices(text: str, allowed: Sequence[str], what: str, split: str) -> list[str]:
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    wrong = [c for c in chosen if c not in allowed]
    if not chosen or wrong:
        raise DataError(f"split {split!r}: {what} {', '.join(wrong) or '(none)'} unknown; choose from "
                        f"{', '.join(allowed)} (several joined by commas)")
    return chosen


def acdc_folders(root: Path, split: str) -> list[Path]:
    """The image folders of an ACDC split: ``SPLIT`` (every condition) or ``COND[,COND...]/SPLIT``; each must exist."""
    conditions, _, name = split.rpartition("/")
    chosen = _choices(conditions, ACDC_CONDITIONS, "condition", split) if conditions else list(ACDC_CONDITIONS)
    folders = [root / "rgb_anon" / c / name for c in chosen]
    for folder in folders:
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found; {ACDC_LAYOUT} (check root; with some conditions only, "
                            "name them: split night/val or fog,snow/val)")
    return folders


def darkzurich_folders(root: Path, split: str) -> list[Path]:
    """The image folders of a Dark Zurich split: ``SPLIT`` (every time of day it holds) or ``SPLIT/TIME[,TIME]``."""
    name, _, times = split.partition("/")
    if times:
        folders = [root / "rgb_anon" / name / t for t in _choices(times, DARKZURICH_TIMES, "time of day", split)]
        missing = [f for f in folders if not f.is_dir()]
    else:
        folders = [f for t in DARKZURICH_TIMES if (f := root / "rgb_anon" / name / t).is_dir()]
        missing = [] if folders else [root / "rgb_anon" / name / "night"]
    if missing:
        raise DataError(f"{missing[0]}: folder not found; {DARKZURICH_LAYOUT} (check root and split)")
    return folders


def walk_anon(root: Path, folders: list[Path], layout: str) -> Tree:
    """Images ``FOLDER/SEQ/NAME_rgb_anon.png`` of every folder, each label at the mirrored path
    ``root/gt/<folder under rgb_anon>/SEQ/NAME_gt_labelIds.png``; labels there without their image are orphans.
    DataError when the folders hold no image or two images share a name."""
    images, labels, orphans = {}, {}, []
    for folder in folders:
        label_folder = root / "gt" / folder.relative_to(root / "rgb_anon")
        for path in sorted(folder.glob(f"*/*{IMAGE_SUFFIX}")):
            name = path.name[: -len(IMAGE_SUFFIX)]
            if name in images:
                raise DataError(f"{path}: a second image named {name} (first: {images[name]}); keep one")
            images[name] = path
        for path in sorted(label_folder.glob(f"*/*{LABEL_SUFFIX}")):
            name = path.name[: -len(LABEL_SUFFIX)]
            image = images.get(name)
            if image is not None and image.parent == folder / path.parent.name:
                labels[name] = path
            else:
                orphans.append(path)
    if not images:
        raise DataError(f"{folders[0]}: no */*{IMAGE_SUFFIX} images found; {layout}")
    return Tree(list(images), images, labels, orphans)


def walk_acdc(root: Path, split: str = "val") -> Tree:
    return walk_anon(root, acdc_folders(root, split), ACDC_LAYOUT)


def walk_darkzurich(root: Path, split: str = "val") -> Tree:
    return walk_anon(root, darkzurich_folders(root, split), DARKZURICH_LAYOUT)


class AnonDataset(PairedDataset):
    """One split of ACDC or Dark Zurich (``walk``: ``walk_acdc`` or ``walk_darkzurich``), 19 Cityscapes classes.

    Each sample is a dict: ``image`` float32 [3, H, W] in [0, 1]; ``mask`` int64 [H, W] of train ids with
    255 = ignore (only when ``labels=True``); ``name`` str (the stem).

    Args:
        root: the folder holding ``rgb_anon/`` and ``gt/``.
        split: see the module docstring (``val`` when None).
        labels: load labels (the test splits have none: use them unlabelled).
        transform: an albumentations transform called as ``transform(image=..., mask=...)`` on uint8 arrays.
    """

    walk: Callable[[Path, str], Tree]
    label_hint = ""

    def __init__(self, root: str | Path, split: str | None = None, labels: bool = True,
                 transform: Callable | None = None) -> None:
        super().__init__(root, labels, transform)
        self.split = split or "val"
        def label_path(name: str, image: Path) -> Path:  # the image's folder mirrored under gt/
            return self.root / "gt" / image.parent.relative_to(self.root / "rgb_anon") / f"{name}{LABEL_SUFFIX}"

        pairs = pair_files(type(self).walk(self.root, self.split), labels, label_path, self.root / "rgb_anon",
                           f"{self.label_hint}or use the split unlabelled (labels=False)")
        self.names, self.images, self.label_files = pairs.names, pairs.images, pairs.label_files


class ACDCDataset(AnonDataset):
    walk = staticmethod(walk_acdc)
    label_hint = "unpack gt_trainval.zip into ROOT (test has no public labels) "


class DarkZurichDataset(AnonDataset):
    walk = staticmethod(walk_darkzurich)
    label_hint = "only val/night has labels (Dark_Zurich_val_anon.zip): pick it "
