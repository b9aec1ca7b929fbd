"""The folder format: any domain as ``ROOT/images/NAME.(png|jpg)``, ``ROOT/labels/NAME.png``, ``ROOT/classes.yaml``.

Optional split lists: ``ROOT/splits/SPLIT.txt``, one NAME per line.
"""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from adapt.data.augment import seed_augment
from adapt.data.labels import ClassSet
from adapt.data.pairs import Tree, images_in, labels_in, pair_files, read_list_file
from adapt.data.sampling import MAX_REDRAWS, SampleKey, redraw_seed
from adapt.errors import DataError


def walk_folder(root: Path, split: str | None = None) -> Tree:
    """The folder layout: ``root/images/NAME.*``, ``root/labels/NAME.png``, optional ``root/splits/SPLIT.txt``.
    DataError when ``images/``, the split list or any image is missing."""
    image_dir = root / "images"
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: folder not found; a folder dataset needs ROOT/images, ROOT/labels "
                        "and ROOT/classes.yaml (check the path)")
    images = images_in(image_dir)
    if not images:
        raise DataError(f"{image_dir}: no .png/.jpg images found")
    names = list(images) if split is None else read_list_file(
        root / "splits" / f"{split}.txt", what="split list", hint="give an existing split or none")
    return Tree(names, images, *labels_in(root / "labels", images))


def read_image(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB; a clear DataError for a missing, unreadable or truncated file."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: cannot decode image (missing, truncated or not an image); "
                        "replace or remove the file")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """uint8 [H, W] raw label values. Read with PIL, so palettised PNGs give indices, not palette colours."""
    try:
        with Image.open(path) as label:
            if label.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"{path}: label has mode {label.mode}; labels must be single-channel "
                                "PNGs holding class ids")
            values = np.asarray(label)
    except FileNotFoundError:
        raise DataError(f"{path}: label not found; add it or drop its image") from None
    except (OSError, SyntaxError) as err:
        raise DataError(f"{path}: cannot decode label ({err}); replace or remove the file") from None
    if values.dtype != np.uint8 and values.size and (values.min() < 0 or values.max() > 255):
        raise DataError(f"{path}: label values up to {values.max()} do not fit the 0..255 class ids; "
                        "write labels as 8-bit PNGs of class ids")
    return values.astype(np.uint8, copy=False)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)


class ImageLabelDataset(Dataset):
    """Shared sample logic of every dataset: subclasses fill ``names``, ``images``, ``label_files`` and set
    ``classes`` (the label-file value -> train index table comes from it).

    Each sample is a dict: ``image`` float32 [3, H, W] in [0, 1]; ``mask`` int64 [H, W] of train indices with
    255 = ignore (only when ``labels=True``); ``name`` str; ``valid`` uint8 [H, W] (1: a pseudo-label counts, 0: in
    the margins) when the transform returns one (``adapt.data.augment.TrainTransform`` with ``margins``).
    """

    classes: ClassSet | None  # None only for unlabelled folder images without classes.yaml
    size_hint = "image and label must have the same size"
    known_values: np.ndarray | None = None  # bool [V]: label values allowed (folder: class ids + ignore_index)
    bad_images = "stop"  # "skip": an unreadable sample gives way to the next readable one (DomainDataModule sets it)

    def __init__(self, root: str | Path, labels: bool, transform: Callable | None) -> None:
        self.root, self.labels, self.transform = Path(root), labels, transform
        self.names: list[str] = []
        self.images: list[Path] = []
        self.label_files: list[Path] = []

    def __len__(self) -> int:
        return len(self.images)

    @cached_property
    def lut(self) -> np.ndarray:
        """uint8 [V]: label-file value -> train index or 255 (V = 256; 65536 for 16-bit labels)."""
        return self.classes.lookup_table()

    def read_raw_label(self, path: Path) -> np.ndarray:
        """[H, W] label-file values (uint8; uint16 for 16-bit layouts), indices of ``lut``. Layouts whose labels
        are not single-channel PNGs of ids (SYNTHIA, CARLA) override it."""
        return read_label(path)

    def read_mask(self, path: Path) -> np.ndarray:
        """uint8 [H, W] train indices (255 = ignore) of the label file ``path``."""
        return self.lut[self.read_raw_label(path)]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The raw sample: uint8 [H, W, 3] image and uint8 [H, W] train-index mask (None without labels)."""
        image = read_image(self.images[index])
        if not self.labels:
            return image, None
        raw = self.read_raw_label(self.label_files[index])
        if raw.shape != image.shape[:2]:
            raise DataError(f"{self.label_files[index]}: label is {raw.shape[1]}x{raw.shape[0]} but its image "
                            f"{self.images[index].name} is {image.shape[1]}x{image.shape[0]}; {self.size_hint}")
        if self.known_values is not None and not self.known_values[raw].all():
            bad = sorted(set(np.unique(raw).tolist()) - set(np.flatnonzero(self.known_values).tolist()))
            raise DataError(f"{self.label_files[index]}: label values {bad[:8]} are neither class ids of "
                            f"{self.root / 'classes.yaml'} nor its ignore_index {self.classes.ignore_index}; "
                            "add the classes or write those pixels as ignore_index")
        mask = self.lut[raw]
        return image, mask

    def __getitem__(self, key: int | tuple[int, ...]) -> dict:
        """``key``: an index, ``(index, seed)`` (``adapt.data.sampling.ShardedSampler``): the transform's RNG is
        then seeded with ``seed`` first, so the sample's augmentation depends on the key alone; or a ``SampleKey``
        with a ``rare_class`` (``adapt.data.rare_class.RareClassSampler``): the labelled sample is then augmented
        again (seeds ``redraw_seed(seed, 1..10)``) until its mask holds more than ``min_pixels`` pixels of that
        class, at most 11 draws, the last one kept unchecked."""
        index, seed, rare_class, min_pixels = SampleKey(*key) if isinstance(key, tuple) else (key, None, -1, 0.0)
        skipped = 0
        while True:
            try:
                image, mask = self.load(index)
                break
            except DataError as err:
                if self.bad_images != "skip" or skipped + 1 >= len(self):
                    raise
                print(f"adapt: warning: data.bad_images: skip: {err}", file=sys.stderr, flush=True)
                skipped, index = skipped + 1, (index + 1) % len(self)
        out: dict = {"image": image, "mask": mask}
        if self.transform is not None:
            for draw in range(MAX_REDRAWS + 1):
                if seed is not None:
                    seed_augment(self.transform, redraw_seed(seed, draw))
                out = self.transform(image=image) if mask is None else self.transform(image=image, mask=mask)
                if rare_class < 0 or mask is None or np.count_nonzero(out["mask"] == rare_class) > min_pixels:
                    break
        sample = {"image": image_to_tensor(out["image"]), "name": self.names[index]}
        if out.get("mask") is not None:
            sample["mask"] = torch.from_numpy(np.ascontiguousarray(out["mask"])).long()
        if "valid" in out:  # uint8 [H, W]: 1 where a pseudo-label counts (data.init_args.pseudo_label_margins)
            sample["valid"] = torch.from_numpy(np.ascontiguousarray(out["valid"]))
        if self.bad_images == "skip":
            sample["skipped"] = skipped  # samples passed over to reach this one (counted by adapt.callbacks.RunRecord)
        return sample


class FolderDataset(ImageLabelDataset):
    """One domain in the folder format.

    Each sample is a dict: ``image`` float32 [3, H, W] in [0, 1]; ``mask`` int64 [H, W] of train indices with
    255 = ignore (only when ``labels=True``); ``name`` str.

    Args:
        root: the dataset folder (``images/``, ``labels/``, ``classes.yaml``; unlabelled images need only
            ``images/``).
        split: name of a list in ``root/splits/`` (without ``.txt``); all images when None.
        labels: load labels (evaluation, supervised training); False for unlabelled target images.
        transform: an albumentations transform called as ``transform(image=..., mask=...)`` on uint8 arrays.
    """

    def __init__(self, root: str | Path, split: str | None = None, labels: bool = True,
                 transform: Callable | None = None) -> None:
        super().__init__(root, labels, transform)
        self.split = split
        tree = walk_folder(self.root, split)
        class_file = self.root / "classes.yaml"
        self.classes = ClassSet.from_yaml(class_file) if labels or class_file.is_file() else None
        if self.classes is not None:
            self.known_values = self.classes.valid_values()
        pairs = pair_files(tree, labels, lambda name, image: self.root / "labels" / f"{name}.png",
                           self.root / "images", "add the labels or use the folder as an unlabelled target",
                           list_file=None if split is None else self.root / "splits" / f"{split}.txt",
                           refuse_orphans=split is None)
        self.names, self.images, self.label_files = pairs.names, pairs.images, pairs.label_files


class Joined(Dataset):
    """Several datasets' chosen samples as one: ``parts`` is a list of (dataset, indices into it); keys are
    indices or tuples ``(index, seed, ...)`` (``ShardedSampler``, ``SampleKey``), passed on as such."""

    def __init__(self, parts: list[tuple[ImageLabelDataset, list[int]]]) -> None:
        self.parts = parts
        self.keys = [(p, i) for p, (_, indices) in enumerate(parts) for i in indices]
        self.root, self.transform = parts[0][0].root, None

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, key: int | tuple[int, ...]) -> dict:
        index, *rest = key if isinstance(key, tuple) else (key,)
        part, local = self.keys[index]
        return self.parts[part][0][(local, *rest) if rest else local]
