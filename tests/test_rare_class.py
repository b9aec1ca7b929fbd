"""Rare-class sampling: class statistics from the labels, the draw against DAFormer's formula, processes, cache."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_datamodule

from adapt.data.folder import read_label
from adapt.data.rare_class import RareClassSampler, RareClassSampling, class_probabilities, class_stats
from adapt.data.sampling import SampleKey
from adapt.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def source(tiny_pair):
    dm = tiny_datamodule(tiny_pair)
    dm.setup("fit")
    return dm.source, len(dm.class_names)


def test_class_stats_count_label_pixels(source, tmp_path):
    dataset, num_classes = source
    cache = tmp_path / "stats.json"
    pixels = class_stats(dataset, num_classes, cache)
    for row, path in zip(pixels, dataset.label_files):
        mask = dataset.lut[read_label(path)]
        assert row.tolist() == [int((mask == c).sum()) for c in range(num_classes)]
    assert json.loads(cache.read_text())["pixels"] == pixels.tolist()
    cache.write_text(json.dumps({"label_files": [str(p) for p in dataset.label_files],
                                 "pixels": (pixels * 0 + 1).tolist()}))
    assert (class_stats(dataset, num_classes, cache) == 1).all()  # read from the cache, not counted again
    cache.write_text("{torn")
    assert (class_stats(dataset, num_classes, cache) == pixels).all()  # a torn cache is counted anew


def test_draw_follows_the_formula(source):
    dataset, num_classes = source
    pixels = class_stats(dataset, num_classes)
    temperature = 0.1
    frequency = pixels.sum(0) / pixels.sum()
    present = pixels.sum(0) > 0
    by_hand = np.where(present, np.exp((1 - frequency) / temperature), 0)
    by_hand /= by_hand.sum()
    assert class_probabilities(pixels, temperature) == pytest.approx(by_hand, rel=1e-9)
    assert by_hand.max() < 0.9 and (by_hand > 0.01).sum() >= 3  # a draw worth testing: several classes in play

    min_pixels = 100  # the tiny pair's images have 4096 px; DAFormer's 3000 of a GTA5 frame would leave none
    sampler = RareClassSampler(dataset, pixels, temperature, seed=5, min_pixels=min_pixels)
    for c in np.flatnonzero(by_hand):  # samples_with_class: the images with more than min_pixels of c
        pool = np.flatnonzero(pixels[:, c] > min_pixels)
        assert sampler.images_of[c].tolist() == (pool if len(pool) else np.flatnonzero(pixels[:, c])).tolist()
    draws = [sampler.classes_of_epoch(epoch) for epoch in range(300)]
    classes = np.concatenate([c for c, _ in draws])
    images = np.concatenate([i for _, i in draws])
    seen = np.bincount(classes, minlength=num_classes) / len(classes)
    tolerance = 4 * np.sqrt(by_hand * (1 - by_hand) / len(classes)) + 1e-9  # 4 binomial standard deviations
    assert (np.abs(seen - by_hand) <= tolerance).all(), (seen, by_hand)
    assert all(image in sampler.images_of[c] for c, image in zip(classes, images))  # each shows its drawn class
    assert sampler.classes_of_epoch(3)[1].tolist() == RareClassSampler(
        dataset, pixels, temperature, seed=5, min_pixels=min_pixels).classes_of_epoch(3)[1].tolist()
    assert sampler.classes_of_epoch(3)[1].tolist() != sampler.classes_of_epoch(4)[1].tolist()


def test_two_processes_read_what_one_reads(source):
    dataset, num_classes = source
    pixels = class_stats(dataset, num_classes)
    one = list(RareClassSampler(dataset, pixels, 0.01, seed=2))
    two = [list(RareClassSampler(dataset, pixels, 0.01, num_replicas=2, rank=r, seed=2)) for r in (0, 1)]
    interleaved = [pair for step in zip(*two) for pair in step]
    assert interleaved == one[:len(interleaved)]  # indices, augmentation seeds, drawn classes
    classes, images = RareClassSampler(dataset, pixels, 0.01, seed=2).classes_of_epoch(0)
    assert [(k.index, k.rare_class, k.min_pixels) for k in one] == [(i, c, 1500.0) for i, c in zip(images, classes)]
    assert all(isinstance(k, SampleKey) for k in one)
    # the re-drawn crop is a function of the key alone: a second process (another dataset copy) loads the same
    copy = type(dataset)(dataset.root, "train", transform=dataset.transform)
    assert torch.equal(dataset[one[3]]["mask"], copy[one[3]]["mask"])


def test_resume_skips_what_was_read(source):
    dataset, num_classes = source
    pixels = class_stats(dataset, num_classes)
    whole = list(RareClassSampler(dataset, pixels, 0.01, seed=4))
    resumed = RareClassSampler(dataset, pixels, 0.01, seed=4)
    resumed.resume_at(0, 3, 2)
    assert list(resumed) == whole[6:]
    assert list(resumed) == whole  # the next pass is whole


def test_datamodule_samples_source_by_rarity_and_caches_beside_the_run(tiny_pair, tmp_path):
    dm = tiny_datamodule(tiny_pair)
    dm.rare_class_sampling = RareClassSampling(temperature=0.01)
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, default_root_dir=str(tmp_path / "run"),
                                 lightning_module=None)
    dm.setup("fit")
    loaders = dm.train_dataloader()
    assert isinstance(loaders["source"].sampler, RareClassSampler)
    assert type(loaders["target"].sampler).__name__ == "ShardedSampler"
    assert (tmp_path / "run" / "rare_class_stats.json").is_file()
    with pytest.raises(ConfigError, match=r"data\.init_args\.rare_class_sampling\.temperature: 0; give T > 0"):
        RareClassSampling(temperature=0)
    with pytest.raises(DataError, match="rare_class_sampling does not combine with data.init_args.few_shot"):
        type(dm)(str(tiny_pair / "source"), str(tiny_pair / "target"), few_shot=2,
                 rare_class_sampling=RareClassSampling())
    # the hyperparameters record a plain dict, which builds the same data module again
    recorded = type(dm)(str(tiny_pair / "source"), str(tiny_pair / "target"),
                        rare_class_sampling=RareClassSampling(0.05)).hparams["rare_class_sampling"]
    assert recorded == {"temperature": 0.05, "min_pixels": 3000, "min_crop_ratio": 0.5}
    assert type(dm)(str(tiny_pair / "source"), str(tiny_pair / "target"),
                    rare_class_sampling=recorded).rare_class_sampling == RareClassSampling(0.05)
    assert type(dm)(str(tiny_pair / "source"), str(tiny_pair / "target"),  # recorded by an earlier version
                    rare_class_sampling={"temperature": 0.05}).rare_class_sampling == RareClassSampling(0.05)
    with pytest.raises(ConfigError, match=r"rare_class_sampling\.min_crop_ratio: -1; give a ratio >= 0"):
        RareClassSampling(min_crop_ratio=-1)
