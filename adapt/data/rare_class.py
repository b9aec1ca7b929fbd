"""Rare-class sampling of source images (DAFormer's RCS): draw a class by its rarity, then an image that shows it,
then a crop of that image that shows it.

A class ``c`` with pixel frequency ``f_c`` over the source labels is drawn with probability
``P(c) = exp((1 - f_c) / T) / sum_k exp((1 - f_k) / T)`` (temperature ``T``; DAFormer: 0.01), then one image among
those holding more than ``min_pixels`` pixels of ``c`` at their native resolution (DAFormer: 3000), uniformly. The
dataset then augments (resize, crop, flip) the image again, up to 10 times, until the crop holds more than
``min_pixels * min_crop_ratio`` pixels of ``c`` (``adapt.data.sampling.SampleKey``). Pixel counts are read once from
the label files and cached as JSON (``class_stats``); ``RareClassSampler`` turns them into a training order.
``RareClassSampling`` is the recipe's ingredient (``data.init_args.rare_class_sampling``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from torch.utils.data import Dataset

from adapt.data.sampling import RARE, SampleKey, ShardedSampler, derive_seed, sample_seed
from adapt.errors import ConfigError

KEY = "data.init_args.rare_class_sampling"


@dataclass(frozen=True)
class RareClassSampling:
    """DAFormer's rare-class sampling of the source images (the data module's ``rare_class_sampling``; null: a
    plain shuffle).

    Args:
        temperature: T > 0 of ``P(c)`` (smaller: rarer classes drawn more often; DAFormer: 0.01).
        min_pixels: an image is drawn for class ``c`` when it holds more than this many pixels of ``c`` at its
            native resolution (DAFormer, HRDA, MIC: 3000). A class that no image holds so much of (small images)
            is drawn with the images that hold any of it.
        min_crop_ratio: the crop is drawn again (up to 10 times; the 11th draw is kept) until it holds more than
            ``min_pixels * min_crop_ratio`` pixels of ``c``, counted in the crop after resizing; 0 draws the crop
            once (DAFormer: 0.5; HRDA and MIC, which train on twice the resolution: 2.0).
    """

    temperature: float = 0.01
    min_pixels: int = 3000
    min_crop_ratio: float = 0.5

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"{KEY}.temperature: {self.temperature}; give T > 0 (DAFormer: 0.01)")
        if isinstance(self.min_pixels, bool) or not isinstance(self.min_pixels, int) or self.min_pixels < 0:
            raise ConfigError(f"{KEY}.min_pixels: {self.min_pixels!r}; give a pixel count >= 0 (DAFormer: 3000)")
        if not self.min_crop_ratio >= 0:
            raise ConfigError(f"{KEY}.min_crop_ratio: {self.min_crop_ratio}; give a ratio >= 0 (0: no crop "
                              "re-draw; DAFormer: 0.5, HRDA / MIC: 2.0)")


def class_stats(dataset: Dataset, num_classes: int, cache: Path | None = None) -> np.ndarray:
    """int64 [N, C]: pixels of each class in each image's label (ignore left out), read once; with ``cache``, kept
    in that JSON file and reused while it lists the same label files."""
    files = [str(path) for path in dataset.label_files]
    try:  # a cache that is missing, torn or made for other files is counted anew
        stored = json.loads(cache.read_text())
        if stored["label_files"] == files and len(stored["pixels"][0]) == num_classes:
            return np.asarray(stored["pixels"], dtype=np.int64)
    except (AttributeError, OSError, ValueError, KeyError, IndexError):
        pass
    counts = np.stack([np.bincount(dataset.read_mask(Path(f)).ravel(), minlength=256)[:num_classes]
                       for f in files])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"label_files": files, "pixels": counts.tolist()}))
    return counts


def class_probabilities(pixels: np.ndarray, temperature: float) -> np.ndarray:
    """float64 [C]: ``P(c)`` from per-image pixel counts ``pixels`` [N, C]; classes absent from every image get 0."""
    totals = pixels.sum(0).astype(np.float64)
    frequency = totals / max(totals.sum(), 1)
    logits = (1 - frequency) / temperature
    logits = np.where(totals > 0, logits - logits[totals > 0].max(), -np.inf)
    weights = np.exp(logits)
    return weights / weights.sum()


class RareClassSampler(ShardedSampler):
    """``ShardedSampler`` whose epoch order is drawn by rare-class sampling instead of a permutation.

    Each of the epoch's ``len(dataset)`` positions draws a class by ``class_probabilities`` and then an image
    holding more than ``min_pixels`` of it; the order is a function of ``(seed, stream, epoch)`` alone, so W
    processes still read what one process reads. Yields ``SampleKey(index, sample_seed, class, min_pixels *
    min_crop_ratio)``, which tells the dataset to draw the crop again until it shows the class; plain
    ``(index, sample_seed)`` pairs when ``min_crop_ratio`` is 0.

    Args:
        dataset, num_replicas, rank, seed, stream: as ``ShardedSampler``.
        pixels: int64 [N, C] from ``class_stats``.
        temperature, min_pixels, min_crop_ratio: as ``RareClassSampling``.
    """

    def __init__(self, dataset: Dataset, pixels: np.ndarray, temperature: float, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0, stream: int = 0, min_pixels: int = 3000,
                 min_crop_ratio: float = 0.5) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed, stream=stream)
        self.probabilities = class_probabilities(pixels, temperature)
        self.crop_pixels = min_pixels * min_crop_ratio  # the crop must hold more than this of the drawn class
        self.redraw = min_crop_ratio > 0
        self.images_of = [np.flatnonzero(pixels[:, c] > min_pixels) for c in range(pixels.shape[1])]
        for c, images in enumerate(self.images_of):
            if not len(images) and self.probabilities[c] > 0:  # present only in slivers: any image holding it
                self.images_of[c] = np.flatnonzero(pixels[:, c] > 0)

    def classes_of_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(classes drawn, images drawn), each int64 [total_size], for ``epoch`` (the same on every process)."""
        rng = np.random.default_rng(derive_seed(RARE, self.run_seed, self.stream, epoch))
        classes = rng.choice(len(self.probabilities), size=self.total_size, p=self.probabilities)
        images = np.array([self.images_of[c][rng.integers(len(self.images_of[c]))] for c in classes], dtype=np.int64)
        return classes, images

    def __iter__(self) -> Iterator[SampleKey | tuple[int, int]]:
        skip = self.resume[1] if self.resume is not None and self.resume[0] == self.epoch else 0
        self.resume = None if self.resume is None or self.resume[0] <= self.epoch else self.resume
        shard = slice(self.rank, self.total_size, self.num_replicas)
        classes, images = (drawn[shard] for drawn in self.classes_of_epoch(self.epoch))
        for position in range(skip, len(images)):
            # the sample seed is keyed to the position: one image drawn twice is augmented twice differently
            seed = sample_seed(self.run_seed, self.stream, self.epoch, position * self.num_replicas + self.rank)
            index = int(images[position])
            yield SampleKey(index, seed, int(classes[position]), self.crop_pixels) if self.redraw else (index, seed)
