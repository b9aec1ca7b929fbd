"""DomainDataModule: labelled source + unlabelled target for training, a labelled target split for evaluation.

``train_dataloader()`` returns ``{"source": loader, "target": loader}``; Lightning combines them (CombinedLoader,
``max_size_cycle``: an epoch is the longer of the two, the shorter one cycles). Samplers come from
``adapt.data.sampling``: W processes with batch b read the same global batches as one process with batch W b, and
every image is evaluated exactly once.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from adapt.data import synthetic
from adapt.data.augment import TrainTransform, build_augment, check_transform_args, seed_augment
from adapt.data.datasets import DatasetKind, dataset_classes, open_dataset
from adapt.data.folder import ImageLabelDataset, Joined
from adapt.data.labels import ClassSet
from adapt.data.rare_class import RareClassSampler, RareClassSampling, class_stats
from adapt.data.sampling import EvenSampler, ShardedSampler, global_seed
from adapt.errors import DataError


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed the dataset's albumentations pipeline from the worker's torch seed, for
    loaders whose sampler gives plain indices (``ShardedSampler`` gives each sample its own seed)."""
    info = torch.utils.data.get_worker_info()
    seed_augment(getattr(info.dataset, "transform", None), info.seed)


class DomainDataModule(pl.LightningDataModule):
    """Source and target domains, each in the folder format or an official layout (GTA5, Cityscapes, SYNTHIA, ACDC,
    Dark Zurich, CARLA frames; ``adapt.data.datasets.open_dataset``).

    Args:
        source_root: labelled source domain.
        target_root: target domain; its images are served unlabelled for training.
        source_split: split of ``source_root`` used for training (all images when None; see ``open_dataset``).
        target_split: split of ``target_root`` served (unlabelled) for training.
        val_root: labelled target set for validation and test (default: ``target_root``).
        val_split: split of ``val_root``.
        source_kind: layout of ``source_root``: ``folder``, ``gta5``, ``cityscapes``, ``synthia``, ``acdc``,
            ``darkzurich``, ``carla`` (CARLA 0.9.14+ tags) or ``carla_legacy`` (0.9.0-0.9.13 tags).
        target_kind: layout of ``target_root`` and ``val_root``.
        augment: domain randomization of source images: a preset (``none``; ``flip``: horizontal flip only, as
            DAFormer / HRDA / MIC; ``weak``: flip and mild colour; ``strong``), a pipeline file or an inline
            albumentations pipeline (see ``adapt.data.augment.build_augment``).
        target_augment: augmentation of the unlabelled target training images, the same kinds of values as
            ``augment``; ``none`` (resize and crop only) or ``flip`` (DAFormer / HRDA / MIC flip both domains).
            Use geometry only: the self-training tasks add their own colour augmentation to the images the
            student sees, and the teacher should label the target as it looks.
        crop_size: ``(height, width)`` of random training crops; whole images when None (then all images of a
            domain must have one size).
        resize: ``(height, width)`` the training images of the source (and of the target, unless
            ``target_resize`` is set) are resized to before augmentation and cropping (validation images keep their
            size: the evaluation protocol decides); None keeps sizes.
        target_resize: the target training images' own size, as ``resize``; None: ``resize``.
        keep_ratio: False stretches images to exactly ``resize`` / ``target_resize`` (area interpolation); True
            keeps each image's aspect ratio, rescaling it by the largest factor that keeps its long side within
            the larger and its short side within the smaller of the two numbers, sides rounded as
            ``int(side * factor + 0.5)``, bilinear (mmseg's ``Resize``, as DAFormer / HRDA / MIC: GTA5's 1052x1914
            frames at ``resize: [720, 1280]`` become 704x1280, at ``[1440, 2560]`` 1407x2560). Labels: nearest.
        cat_max_ratio: a crop of a labelled source image is drawn again (up to 10 times, mmseg's ``RandomCrop``)
            while it shows fewer than two classes or one class holds this share or more of its labelled pixels;
            1.0 = off (DAFormer / HRDA / MIC on GTA5 and SYNTHIA: 0.75).
        pseudo_label_margins: ``(top, bottom, left, right)`` pixels of the resized target image whose pseudo-labels
            do not count: each target training sample then carries ``valid`` (uint8 [H, W], 1 where a pseudo-label
            counts), built at full size and cropped / flipped with the image (DAFormer: ``[15, 120, 0, 0]`` with
            512-row images; HRDA / MIC: ``[30, 240, 30, 30]``); None: no ``valid`` key.
        batch_size: images per domain per training step and process (global batch: batch_size x processes).
        val_batch_size: images per validation / test step.
        num_workers: DataLoader worker processes per loader.
        pin_memory: page-locked host memory for faster copies to a GPU.
        persistent_workers: keep workers alive between epochs (needs ``num_workers > 0``).
        bad_images: a training image or label that cannot be read mid-run: ``stop`` the run (naming the file) or
            ``skip`` it (the next readable sample takes its place, a warning names the file, and the count is
            logged as ``train/skipped_images`` and written to run.json).
        few_shot: add this many *labelled* target images, drawn by the run's seed from ``few_shot_split`` of
            ``target_root``, to the source training images (with the source's augmentation); 0 = none.
        few_shot_split: the labelled split of ``target_root`` to draw them from; it may not share an image with
            the validation split.
        few_shot_repeat: how often each drawn image appears per epoch (a few images among many source ones).
        rare_class_sampling: rare-class sampling of source images (DAFormer's RCS, ``adapt.data.rare_class``):
            ``{temperature: 0.01, min_pixels: 3000, min_crop_ratio: 0.5}`` draws a class by rarity, then an image
            with more than ``min_pixels`` of it, then crops until the crop holds more than ``min_pixels *
            min_crop_ratio`` of it (HRDA / MIC: ``min_crop_ratio: 2.0``); null draws a plain shuffle.
            Class pixel counts are read once and cached in ``rare_class_stats.json`` under the trainer's
            ``default_root_dir``. Does not combine with ``few_shot``.
    """

    # recipe keys of earlier versions -> their spelling now (adapt.recipe names it in a one-line error)
    renamed_arguments: dict[str, str] = {"rare_class_temperature": "rare_class_sampling.temperature"}

    def __init__(self, source_root: str, target_root: str, source_split: str | None = None,
                 target_split: str | None = None, val_root: str | None = None, val_split: str | None = None,
                 augment: str | dict[str, Any] | None = "none", crop_size: tuple[int, int] | None = None,
                 batch_size: int = 8, val_batch_size: int = 4, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, source_kind: DatasetKind = "folder",
                 target_kind: DatasetKind = "folder", resize: tuple[int, int] | None = None, few_shot: int = 0,
                 few_shot_split: str | None = None, few_shot_repeat: int = 1,
                 bad_images: Literal["stop", "skip"] = "stop",
                 rare_class_sampling: RareClassSampling | None = None,
                 target_augment: str | dict[str, Any] | None = "none", target_resize: tuple[int, int] | None = None,
                 keep_ratio: bool = False, cat_max_ratio: float = 1.0,
                 pseudo_label_margins: tuple[int, int, int, int] | None = None) -> None:
        sampling = RareClassSampling(**rare_class_sampling) if isinstance(rare_class_sampling, dict) else \
            rare_class_sampling  # a dict: from saved hyperparameters
        rare_class_sampling = None if sampling is None else vars(sampling)  # the hyperparameters record a plain dict
        super().__init__()
        self.save_hyperparameters()
        self.rare_class_sampling = sampling
        self.source_kind, self.target_kind = source_kind, target_kind
        self.source_root, self.target_root = source_root, target_root
        self.source_split, self.target_split = source_split, target_split
        self.val_root, self.val_split = val_root or target_root, val_split
        self.augment, self.crop_size, self.resize = augment, crop_size, resize
        self.target_augment, self.target_resize, self.keep_ratio = target_augment, target_resize, keep_ratio
        self.cat_max_ratio, self.pseudo_label_margins = cat_max_ratio, pseudo_label_margins
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.loader_kwargs = dict(num_workers=num_workers, pin_memory=pin_memory,
                                  persistent_workers=persistent_workers and num_workers > 0)
        self.few_shot, self.few_shot_split, self.few_shot_repeat = few_shot, few_shot_split, few_shot_repeat
        self.few_shot_names: list[str] = []
        if bad_images not in ("stop", "skip"):
            raise DataError(f"data.bad_images: {bad_images!r}; choose stop or skip")
        self.bad_images = bad_images
        self.resume_position: tuple[int, int] | None = None  # (epoch, batches done) of a resumed run
        if self.rare_class_sampling is not None and few_shot:
            raise DataError("data.init_args.rare_class_sampling does not combine with data.init_args.few_shot; drop "
                            "one of them")
        if few_shot < 0 or few_shot_repeat < 1:
            raise DataError(f"data.few_shot ({few_shot}) must be >= 0 and data.few_shot_repeat ({few_shot_repeat}) "
                            ">= 1")
        check_transform_args(resize=resize, target_resize=target_resize, cat_max_ratio=cat_max_ratio,
                             pseudo_label_margins=pseudo_label_margins)
        self._transforms()  # fail now, not in a worker, on a bad pipeline

    def _transforms(self) -> tuple[TrainTransform, TrainTransform]:
        """The training transforms of the source (labelled) and of the target (unlabelled) images."""
        source = build_augment(self.augment, self.crop_size, self.resize, self.keep_ratio, self.cat_max_ratio)
        target = build_augment(self.target_augment, self.crop_size, self.target_resize or self.resize,
                               self.keep_ratio, margins=self.pseudo_label_margins, key="data.init_args.target_augment")
        return source, target

    @cached_property
    def classes(self) -> ClassSet:
        """The class set of the source domain; target and validation sets must list the same names."""
        source = dataset_classes(self.source_kind, self.source_root)
        for root in {self.target_root, self.val_root}:
            if root != self.val_root and self.target_kind == "folder" and not (Path(root) / "classes.yaml").is_file():
                continue  # unlabelled target images need no class list
            other = dataset_classes(self.target_kind, root)
            if other.names != source.names:
                raise DataError(f"{root}: classes {list(other.names)} differ from the source's "
                                f"{list(source.names)}; give both domains one class list in one order")
        return source

    @property
    def class_names(self) -> list[str]:
        return list(self.classes.names)

    def setup(self, stage: str) -> None:
        self.val = open_dataset(self.target_kind, self.val_root, self.val_split, labels=True)
        if stage == "fit":
            augment, target_augment = self._transforms()
            self.source = open_dataset(self.source_kind, self.source_root, self.source_split, labels=True,
                                       transform=augment)
            self.target = open_dataset(self.target_kind, self.target_root, self.target_split, labels=False,
                                       transform=target_augment)
            if self.few_shot:
                self.source = self._with_few_shot(self.source, augment)
            for dataset in (self.target, *(p[0] for p in getattr(self.source, "parts", [(self.source,)]))):
                dataset.bad_images = self.bad_images

    def _with_few_shot(self, source: ImageLabelDataset, augment) -> Joined:
        """``source`` and ``few_shot`` labelled target images (each ``few_shot_repeat`` times), drawn by seed."""
        pool = open_dataset(self.target_kind, self.target_root, self.few_shot_split, labels=True, transform=augment)
        if self.few_shot > len(pool):
            raise DataError(f"data.few_shot: {self.few_shot} images asked, {pool.root} split "
                            f"{self.few_shot_split!r} has {len(pool)}; lower data.few_shot")
        rng = np.random.default_rng([global_seed(), 7])
        chosen = sorted(int(i) for i in rng.choice(len(pool), self.few_shot, replace=False))
        self.few_shot_names = [pool.names[i] for i in chosen]
        shared = set(self.few_shot_names) & set(self.val.names) if Path(pool.root) == Path(self.val.root) else set()
        trainer = getattr(self, "trainer", None)
        if shared and not (trainer is not None and trainer.limit_val_batches == 0):  # validation that never runs
            # reads no frame: a fit on all labelled development frames has none left to validate on
            raise DataError(f"data.few_shot_split {self.few_shot_split!r} shares {sorted(shared)[0]} with the "
                            "validation split; draw few-shot images from a split that evaluation does not use (or, with no "
                            "frames left to validate on, set trainer.limit_val_batches: 0)")
        return Joined([(source, list(range(len(source)))), (pool, chosen * self.few_shot_repeat)])

    def _processes(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: ImageLabelDataset, batch_size: int, sampler: DistributedSampler) -> DataLoader:
        # its own generator: starting an epoch's iterator draws nothing from the global torch RNG (dropout's)
        generator = torch.Generator().manual_seed(global_seed())
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, worker_init_fn=seed_worker,
                          drop_last=isinstance(sampler, ShardedSampler), generator=generator, **self.loader_kwargs)

    def state_dict(self) -> dict:
        """Where training stands in its epoch (saved in checkpoints): ``epoch`` and ``batches`` done in it."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        # Lightning has no public count of the batches done in the current epoch; fit_loop.epoch_loop.batch_progress
        # is the loop's own record (pytorch-lightning 2.4 to 2.6). adapt reads Lightning's private state here only.
        return {"epoch": trainer.current_epoch, "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict) -> None:
        """A resumed run: its training samplers skip what the interrupted run had read of that epoch."""
        self.resume_position = (state["epoch"], state["batches"]) if state else None

    def train_dataloader(self) -> dict[str, DataLoader]:
        """Per process: ``batch_size`` images per domain per step, from a shuffled shard (``ShardedSampler``); only
        the domains in the task's ``train_domains`` (both when it has none)."""
        world_size, rank = self._processes()
        trainer = getattr(self, "trainer", None)
        domains = getattr(trainer.lightning_module if trainer else None, "train_domains", ("source", "target"))
        loaders = {}
        for stream, (name, dataset) in enumerate((("source", self.source), ("target", self.target))):
            if name not in domains:  # the task never reads them: no decoding for nothing
                continue
            if len(dataset) < self.batch_size * world_size:
                raise DataError(f"{dataset.root}: {len(dataset)} {name} images, fewer than batch_size "
                                f"{self.batch_size} x {world_size} processes; lower data.batch_size")
            if name == "source" and self.rare_class_sampling is not None:
                cache = Path(trainer.default_root_dir) / "rare_class_stats.json" if trainer else None
                pixels = class_stats(dataset, len(self.classes.names), cache)
                rcs = self.rare_class_sampling
                sampler = RareClassSampler(dataset, pixels, rcs.temperature, world_size, rank, seed=global_seed(),
                                           stream=stream, min_pixels=rcs.min_pixels,
                                           min_crop_ratio=rcs.min_crop_ratio)
            else:
                sampler = ShardedSampler(dataset, world_size, rank, seed=global_seed(), stream=stream)
            if self.resume_position is not None:
                epoch, batches = self.resume_position
                sampler.resume_at(epoch, batches, self.batch_size)
            loaders[name] = self._loader(dataset, self.batch_size, sampler)
        self.resume_position = None
        return loaders

    def val_dataloader(self) -> DataLoader:
        """Per process: its share of the validation set, every image once over all processes (``EvenSampler``)."""
        return self._loader(self.val, self.val_batch_size, EvenSampler(self.val, *self._processes()))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class SyntheticDataModule(DomainDataModule):
    """The embedded synthetic domain pair (``adapt.data.synthetic``): a flat "game" source and a dusk-camera
    target of street scenes, written under ``root`` on first use (deterministic by ``seed``), then served like
    any folder pair: train on ``source/train`` + unlabelled ``target/train``, evaluate on ``target/val``.

    Args:
        root: where the pair is written (``root/source``, ``root/target``).
        num_images: images per domain (a quarter of them form each domain's ``val`` split).
        size: ``(height, width)`` of the rendered images.
        seed: the scenes' seed.
        augment, crop_size, batch_size, val_batch_size, num_workers, pin_memory, persistent_workers: as in
            DomainDataModule.
    """

    def __init__(self, root: str = "data/synthetic", num_images: int = 400, size: tuple[int, int] = (96, 128),
                 seed: int = 0, augment: str | dict[str, Any] | None = "none",
                 crop_size: tuple[int, int] | None = None, batch_size: int = 8, val_batch_size: int = 4,
                 num_workers: int = 0, pin_memory: bool = False, persistent_workers: bool = False) -> None:
        self.root, self.num_images, self.size, self.seed = Path(root), num_images, tuple(size), seed
        super().__init__(source_root=str(self.root / "source"), target_root=str(self.root / "target"),
                         source_split="train", target_split="train", val_split="val", augment=augment,
                         crop_size=crop_size, batch_size=batch_size, val_batch_size=val_batch_size,
                         num_workers=num_workers, pin_memory=pin_memory, persistent_workers=persistent_workers)
        self.save_hyperparameters()

    @cached_property
    def classes(self) -> ClassSet:
        return ClassSet(synthetic.CLASS_NAMES, tuple(range(len(synthetic.CLASS_NAMES))))

    def prepare_data(self) -> None:
        """Write the pair unless ``root`` already holds one made with the same settings."""
        stamp = self.root / "synthetic.json"
        settings = {"num_images": self.num_images, "size": list(self.size), "seed": self.seed}
        if stamp.is_file() and json.loads(stamp.read_text()) == settings:
            return
        synthetic.write_pair(self.root, num_images=self.num_images, size=self.size, seed=self.seed)
        stamp.write_text(json.dumps(settings))
