"""Samplers that make N processes read what one process reads, and random augmentation keyed to the sample.

One process with batch ``W * b`` and ``W`` processes with batch ``b`` each see the same global batches: the order is
a permutation drawn from ``(seed, epoch)`` alone (identical on every process), and process ``r`` reads positions
``r, r + W, r + 2W, ...`` of it, so step ``i`` of the ``W`` processes together covers positions ``[i W b, (i+1) W b)``,
exactly the ``i``-th batch of the single process. Each position comes with a sample seed drawn from
``(seed, stream, epoch, index)``, which the dataset gives to its albumentations pipeline: a sample's random
augmentation does not depend on the number of processes or DataLoader workers, nor on which one loads it.
"""

from __future__ import annotations

import os
from typing import Iterator, NamedTuple

import numpy as np
from torch.utils.data import Dataset, DistributedSampler


def global_seed() -> int:
    """The run's seed, as ``seed_everything`` (the recipe's ``seed_everything``) left it; 0 without one."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


# what a derived seed is for: its first word, so that seeds made for different purposes never coincide
SAMPLE, ORDER, POOL, PROCESS, MIX, RARE, REDRAW = 1, 2, 3, 4, 5, 6, 7


def derive_seed(purpose: int, *words: int) -> int:
    """A 32-bit seed, a pure function of ``purpose`` (SAMPLE, ORDER, POOL, PROCESS, MIX, RARE, REDRAW) and
    non-negative ``words``."""
    return int(np.random.SeedSequence([purpose, *words]).generate_state(1)[0])


def sample_seed(seed: int, stream: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation."""
    return derive_seed(SAMPLE, seed, stream, epoch, index)


def redraw_seed(seed: int, draw: int) -> int:
    """The augmentation seed of draw ``draw`` (0: the first) of the sample whose seed is ``seed``: draw 0 uses
    ``seed`` itself, so a sample that is never drawn again is augmented as without re-draws."""
    return seed if draw == 0 else derive_seed(REDRAW, seed, draw)


class SampleKey(NamedTuple):
    """The key of one training sample with a wish about its crop (``RareClassSampler``; datasets also take plain
    indices and ``(index, seed)`` pairs).

    ``rare_class`` >= 0: the dataset draws the sample's augmentation again (seeds from ``redraw_seed``), up to
    ``MAX_REDRAWS`` times, until its crop holds more than ``min_pixels`` pixels of that class (DAFormer's RCS).
    """

    index: int
    seed: int
    rare_class: int = -1
    min_pixels: float = 0.0


MAX_REDRAWS = 10  # DAFormer: a rare-class crop is drawn again up to 10 times (11 draws, the last one kept unchecked)


class ShardedSampler(DistributedSampler):
    """Training order: shuffled by ``(seed + stream, epoch)``, sharded by interleaving, tail dropped evenly.

    Yields ``(index, sample_seed)`` pairs; ``ImageLabelDataset`` accepts them as keys. Lightning calls
    ``set_epoch`` at every epoch and leaves this sampler in place under DDP (it is a ``DistributedSampler``).

    Args:
        dataset: the dataset to draw from.
        num_replicas: processes reading the dataset (``trainer.world_size``).
        rank: this process (``trainer.global_rank``).
        seed: the run's seed.
        stream: tells apart samplers of one run (source 0, target 1) so that they draw different orders.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 stream: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=derive_seed(ORDER, seed, stream),  # streams of one run draw different orders
                         drop_last=True)
        self.run_seed, self.stream = seed, stream
        self.resume: tuple[int, int] | None = None  # (epoch, positions of this shard already read)

    def resume_at(self, epoch: int, batches: int, batch_size: int) -> None:
        """A resumed run had read ``batches`` batches of ``epoch``: the next pass over that epoch starts after them
        (a shorter domain that cycles continues within its current pass); later passes and epochs are whole.
        ``len`` stays the full length, as Lightning counts batches from where the interrupted run stopped."""
        per_pass = self.num_samples // batch_size  # whole batches per pass (the loader drops the last partial one)
        self.resume = (epoch, (batches % per_pass) * batch_size if per_pass else 0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        skip = 0
        if self.resume is not None and self.resume[0] == self.epoch:
            skip = self.resume[1]
        self.resume = None if self.resume is None or self.resume[0] <= self.epoch else self.resume
        for index in list(super().__iter__())[skip:]:
            yield index, sample_seed(self.run_seed, self.stream, self.epoch, index)


class EvenSampler(DistributedSampler):
    """Evaluation order: process ``r`` reads samples ``r, r + W, ...`` in order, nothing repeated, nothing dropped.

    Lightning's default evaluation sampler pads the last shard with repeated samples so that every process runs
    the same number of steps; repeated samples would be counted twice in the confusion matrix. Here the shards
    differ by at most one sample, and the metrics sum their states once at the end of the epoch.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def decorrelate_processes(rank: int) -> None:
    """Give process ``rank`` > 0 its own torch RNG stream (dropout masks, image pools), drawn from the run's seed.

    ``seed_everything`` seeds every process alike, so without this all processes would draw the same dropout masks
    for their shares of the batch. Process 0 keeps its stream, so one process runs exactly as before.
    """
    if rank > 0:
        import torch

        torch.manual_seed(derive_seed(PROCESS, global_seed(), rank))
