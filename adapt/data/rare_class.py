"""Rare-class sampling of source images (DAFormer's RCS): draw a class by its rarity, then an image that shows it.

A class ``c`` with pixel frequency ``f_c`` over the source labels is drawn with probability
``P(c) = exp((1 - f_c) / T) / sum_k exp((1 - f_k) / T)`` (temperature ``T``; DAFormer: 0.01), then one image among
those holding at least ``MIN_SHARE`` of their pixels in ``c``, uniformly. Frequencies are counted once from the
label files and cached as JSON (``class_stats``); ``RareClassSampler`` turns them into a training order.
``RareClassSampling`` is the recipe's ingredient (``data.init_args.rare_class_sampling``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from torch.utils.data import Dataset

from adapt.data.sampling import RARE, ShardedSampler, derive_seed, sample_seed
from adapt.errors import ConfigError

MIN_SHARE = 3000 / (1914 * 1052)  # DAFormer's 3000 pixels of a GTA5 frame, as a share of any image


@dataclass(frozen=True)
class RareClassSampling:
    """DAFormer's rare-class sampling of the source images (the data module's ``rare_class_sampling``; null: a
    plain shuffle).

    Args:
        temperature: T > 0 of ``P(c)`` (smaller: rarer classes drawn more often; DAFormer: 0.01).
    """

    temperature: float = 0.01

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"data.init_args.rare_class_sampling.temperature: {self.temperature}; give T > 0 "
                              "(DAFormer: 0.01)")


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
    showing it; the order is a function of ``(seed, stream, epoch)`` alone, so W processes still read what one
    process reads. Yields ``(index, sample_seed)`` pairs.

    Args:
        dataset, num_replicas, rank, seed, stream: as ``ShardedSampler``.
        pixels: int64 [N, C] from ``class_stats``.
        temperature: T (smaller: rarer classes drawn more often).
    """

    def __init__(self, dataset: Dataset, pixels: np.ndarray, temperature: float, num_replicas: int = 1,
                 rank: int = 0, seed: int = 0, stream: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed, stream=stream)
        self.probabilities = class_probabilities(pixels, temperature)
        shown = pixels >= np.maximum(MIN_SHARE * pixels.sum(1, keepdims=True), 1)
        self.images_of = [np.flatnonzero(shown[:, c]) for c in range(pixels.shape[1])]
        for c, images in enumerate(self.images_of):
            if not len(images) and self.probabilities[c] > 0:  # present only in slivers: any image holding it
                self.images_of[c] = np.flatnonzero(pixels[:, c] > 0)

    def classes_of_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(classes drawn, images drawn), each int64 [total_size], for ``epoch`` (the same on every process)."""
        rng = np.random.default_rng(derive_seed(RARE, self.run_seed, self.stream, epoch))
        classes = rng.choice(len(self.probabilities), size=self.total_size, p=self.probabilities)
        images = np.array([self.images_of[c][rng.integers(len(self.images_of[c]))] for c in classes], dtype=np.int64)
        return classes, images

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip = self.resume[1] if self.resume is not None and self.resume[0] == self.epoch else 0
        self.resume = None if self.resume is None or self.resume[0] <= self.epoch else self.resume
        order = self.classes_of_epoch(self.epoch)[1][self.rank:self.total_size:self.num_replicas]
        for position, index in enumerate(order[skip:].tolist(), start=skip):
            # the sample seed is keyed to the position: one image drawn twice is augmented twice differently
            yield index, sample_seed(self.run_seed, self.stream, self.epoch, position * self.num_replicas + self.rank)
