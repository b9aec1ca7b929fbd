"""The data pipeline of DAFormer / HRDA / MIC (lhoyer/MIC 2f932a98, mmseg + mmcv), each rule recomputed here from the
official formula: keep-ratio resize, cat_max_ratio crops, rare-class crop re-draws, flip on both domains, the
pseudo-label margins mask, and one-line errors for bad values of the new data arguments."""

from __future__ import annotations

from types import SimpleNamespace

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from trees import write_folder_domain

from adapt.data import DomainDataModule
from adapt.data.augment import CatMaxRatioCrop, build_augment, keep_ratio_size
from adapt.data.folder import FolderDataset
from adapt.data.rare_class import RareClassSampler, RareClassSampling, class_stats
from adapt.data.sampling import SampleKey
from adapt.errors import ConfigError, DataError


def within(successes: int, trials: int, p, sigmas: float = 4.0) -> bool:
    """``successes`` of ``trials`` agrees with probability ``p`` (one for all trials, or one per trial) within
    ``sigmas`` standard deviations."""
    p = np.broadcast_to(np.asarray(p, dtype=np.float64), (trials,))
    return abs(successes - p.sum()) <= sigmas * np.sqrt((p * (1 - p)).sum()) + 1e-9


def mmcv_rescale(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's rescale_size for a (long, short) scale, written out: (height, width)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


def official_balanced(crop: np.ndarray, cat_max_ratio: float) -> bool:
    """mmseg RandomCrop's test of a crop's labels (np.unique counts, ignore 255 left out)."""
    labels, counts = np.unique(crop, return_counts=True)
    counts = counts[labels != 255]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


def official_valid(size: tuple[int, int], margins: tuple[int, int, int, int]) -> np.ndarray:
    """CityscapesDataset.pre_pipeline's valid_pseudo_mask of an image of ``size``."""
    valid = np.ones(size, np.uint8)
    top, bottom, left, right = margins
    if top > 0:
        valid[:top, :] = 0
    if bottom > 0:
        valid[-bottom:, :] = 0
    if left > 0:
        valid[:, :left] = 0
    if right > 0:
        valid[:, -right:] = 0
    return valid


@pytest.mark.parametrize(("shape", "scale", "expected"), [
    ((1052, 1914), (720, 1280), (704, 1280)), ((1052, 1914), (1440, 2560), (1407, 2560)),
    ((1024, 2048), (512, 1024), (512, 1024)), ((1024, 2048), (1024, 2048), (1024, 2048)),
    ((760, 1280), (1520, 2560), (1520, 2560)), ((1914, 1052), (720, 1280), (1280, 704))])
def test_keep_ratio_size_is_mmcv_rescale(shape, scale, expected):
    assert keep_ratio_size(*shape, scale) == mmcv_rescale(*shape, scale) == expected
    out = build_augment("none", resize=scale, keep_ratio=True)(image=np.zeros((*shape, 3), np.uint8),
                                                               mask=np.zeros(shape, np.uint8))
    assert out["image"].shape[:2] == out["mask"].shape == expected


def test_keep_ratio_resizes_bilinear_and_stretch_resizes_area():
    rng = np.random.default_rng(0)
    image, mask = rng.integers(0, 256, (50, 90, 3), dtype=np.uint8), rng.integers(0, 5, (50, 90), dtype=np.uint8)
    kept = build_augment("none", resize=(30, 60), keep_ratio=True)(image=image, mask=mask)
    assert kept["image"].shape[:2] == (30, 54)  # factor min(60 / 90, 30 / 50) = 0.6
    assert np.array_equal(kept["image"], cv2.resize(image, (54, 30), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(kept["mask"], cv2.resize(mask, (54, 30), interpolation=cv2.INTER_NEAREST))
    stretched = build_augment("none", resize=(30, 60))(image=image, mask=mask)
    assert np.array_equal(stretched["image"], cv2.resize(image, (60, 30), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("cat_max_ratio", [0.75, 1.0])
def test_cat_max_ratio_crop_follows_mmseg_loop(monkeypatch, cat_max_ratio):
    label = np.zeros((64, 64), np.uint8)
    label[:, :14] = 1  # most 32x32 crops hold class 0 alone or nearly so
    label[:4] = 255
    candidates = []
    draw = A.RandomCrop.get_params_dependent_on_data

    def recording(self, params, data):
        crop = draw(self, params, data)
        candidates.append(crop["crop_coords"])
        return crop

    monkeypatch.setattr(A.RandomCrop, "get_params_dependent_on_data", recording)
    pipeline = build_augment("none", crop_size=(32, 32), cat_max_ratio=cat_max_ratio)
    assert isinstance(pipeline.pipeline.transforms[0], CatMaxRatioCrop)
    image = np.dstack([np.tile(np.arange(64, dtype=np.uint8), (64, 1))] * 3)  # channel value = column
    good = [official_balanced(label[y:y + 32, x:x + 32], 0.75) for y in range(33) for x in range(33)]
    q = np.mean(good)
    assert 0.05 < q < 0.5  # a tree where most crops are one class, some are not
    outcomes, runs = [], 300
    for seed in range(runs):
        candidates.clear()
        pipeline.set_random_seed(seed)
        out = pipeline(image=image, mask=label)
        x0, y0, x1, y1 = candidates[-1]  # the crop kept is the last one drawn
        assert np.array_equal(out["mask"], label[y0:y1, x0:x1]) and out["image"][0, 0, 0] == x0
        checks = [official_balanced(label[b:d, a:c], 0.75) for a, b, c, d in candidates]
        if cat_max_ratio < 1:
            # mmseg: up to 10 checks; a failing crop is replaced by a new draw; the 11th is kept unchecked
            first = next((i for i, ok in enumerate(checks[:10]) if ok), None)
            assert len(candidates) == (first + 1 if first is not None else 11)
        else:
            assert len(candidates) == 1
        outcomes.append(checks[-1])
    expected = 1 - (1 - q) ** 11 if cat_max_ratio < 1 else q
    assert within(sum(outcomes), runs, expected), (sum(outcomes), runs * expected)


def rare_tree(root, num=3):
    """64x128 labels: class 0, a 24x24 block of class 1 (576 px) at a different place in each, class 2 in 5 px."""
    labels = []
    for k in range(num):
        label = np.zeros((64, 128), np.uint8)
        label[20:44, 10 + 40 * k:34 + 40 * k] = 1
        label[0, :5] = 2
        labels.append(label)
    write_folder_domain(root, labels)
    return labels


class Recording:
    """A transform wrapper that keeps each draw's count of class ``c`` in the output mask."""

    def __init__(self, inner, c):
        self.inner, self.c, self.counts = inner, c, []

    def set_random_seed(self, seed):
        self.inner.set_random_seed(seed)

    def __call__(self, **data):
        out = self.inner(**data)
        self.counts.append(int((out["mask"] == self.c).sum()))
        return out


def test_rare_class_crop_is_drawn_again_until_it_shows_the_class(tmp_path):
    labels = rare_tree(tmp_path / "src")
    min_pixels, ratio = 400, 0.5  # the crop must hold more than 200 px of class 1
    threshold = min_pixels * ratio
    dataset = FolderDataset(tmp_path / "src", transform=build_augment("flip", crop_size=(32, 32)))
    dataset.transform = Recording(dataset.transform, 1)
    runs, shown, chances = 150, 0, []
    for seed in range(runs):
        index = seed % len(labels)
        # the share q of crop positions of this image that hold enough of the class (a flip keeps the count)
        q = np.mean([(labels[index][y:y + 32, x:x + 32] == 1).sum() > threshold for y in range(33) for x in range(97)])
        assert 0.05 < q < 0.5
        chances.append(q)
        dataset.transform.counts.clear()
        sample = dataset[SampleKey(index, seed, 1, threshold)]
        counts = dataset.transform.counts
        assert 1 <= len(counts) <= 11 and all(n <= threshold for n in counts[:-1])  # stops at the first success
        assert len(counts) == 11 or counts[-1] > threshold
        assert int((sample["mask"] == 1).sum()) == counts[-1]  # the sample is the last draw
        shown += counts[-1] > threshold
        again = dataset[SampleKey(index, seed, 1, threshold)]
        assert torch.equal(again["image"], sample["image"])  # the re-draws are a function of the key
    # one draw would show the class with probability q; 11 draws with 1 - (1 - q)^11
    chances = np.array(chances)
    assert within(shown, runs, 1 - (1 - chances) ** 11), shown
    assert shown > chances.sum() + 0.3 * runs
    dataset.transform.counts.clear()
    dataset[SampleKey(0, 7, 2, threshold)]  # class 2 never fills a crop: 11 draws, the last kept
    assert len(dataset.transform.counts) == 11
    dataset.transform.counts.clear()
    dataset[(0, 7)]  # no rare class: one draw
    assert len(dataset.transform.counts) == 1


def test_rare_class_pool_counts_native_pixels(tmp_path):
    labels = []
    for n in (2999, 3000, 3001, 5000):  # pixels of class 1 in each 64x128 label (8192 px)
        label = np.zeros(64 * 128, np.uint8)
        label[:n] = 1
        labels.append(label.reshape(64, 128))
    write_folder_domain(tmp_path / "src", labels)
    write_folder_domain(tmp_path / "tgt", labels)
    dm = DomainDataModule(str(tmp_path / "src"), str(tmp_path / "tgt"), resize=(16, 32), batch_size=1,
                          rare_class_sampling=RareClassSampling(min_pixels=3000, min_crop_ratio=2.0))
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, default_root_dir=str(tmp_path / "run"),
                                 lightning_module=None)
    dm.setup("fit")
    pixels = class_stats(dm.source, 3)
    assert pixels[:, 1].tolist() == [2999, 3000, 3001, 5000]  # counted at native size, not after the resize
    sampler = dm.train_dataloader()["source"].sampler
    assert isinstance(sampler, RareClassSampler)
    assert sampler.images_of[1].tolist() == [2, 3]  # more than 3000 px, as samples_with_class
    keys = list(sampler)
    assert all(isinstance(k, SampleKey) and k.min_pixels == 6000 for k in keys)
    assert all(k.index in sampler.images_of[k.rare_class] for k in keys)
    off = RareClassSampler(dm.source, pixels, 0.01, min_pixels=3000, min_crop_ratio=0)
    assert all(type(k) is tuple and len(k) == 2 for k in off)  # no re-draw: plain (index, seed)


def coordinate_image(height, width):
    """uint8 [H, W, 3]: red = column, green = row (a crop tells its offset and whether it was flipped)."""
    y, x = np.mgrid[:height, :width]
    return np.dstack([x, y, np.zeros_like(x)]).astype(np.uint8)


def located(sample, image, size=32):
    """(x0, y0, flipped) of a crop of the coordinate ``image``; asserts the crop is exactly that part of it."""
    crop = (sample["image"] * 255).round().byte().permute(1, 2, 0).numpy()
    flipped = bool(crop[0, 0, 0] > crop[0, -1, 0])
    x0, y0 = int(crop[0, :, 0].min()), int(crop[0, 0, 1])
    expected = image[y0:y0 + size, x0:x0 + size]
    assert np.array_equal(crop, expected[:, ::-1] if flipped else expected)  # flip only, no colour change
    return x0, y0, flipped


def test_target_flip_and_margins_move_with_the_image(tmp_path):
    image = coordinate_image(64, 96)
    write_folder_domain(tmp_path / "src", [np.zeros((64, 96), np.uint8)] * 2, [image] * 2)
    write_folder_domain(tmp_path / "tgt", [np.zeros((64, 96), np.uint8)] * 2, [image] * 2)
    margins = (5, 10, 3, 4)
    dm = DomainDataModule(str(tmp_path / "src"), str(tmp_path / "tgt"), crop_size=(32, 32), batch_size=2,
                          augment="flip", target_augment="flip", pseudo_label_margins=margins)
    dm.setup("fit")
    full = official_valid((64, 96), margins)
    flips, runs, border, middle = 0, 300, 0, 0
    for seed in range(runs):
        sample = dm.target[(0, seed)]
        x0, y0, flipped = located(sample, image)
        valid = full[y0:y0 + 32, x0:x0 + 32]
        assert sample["valid"].dtype == torch.uint8
        assert np.array_equal(sample["valid"].numpy(), valid[:, ::-1] if flipped else valid)
        flips += flipped
        border += bool(y0 < margins[0] and (sample["valid"][0] == 0).all())
        middle += bool(margins[0] <= y0 <= 64 - 10 - 32 and margins[2] <= x0 <= 96 - 4 - 32
                       and (sample["valid"] == 1).all())
        if seed % 10 == 0:
            located(dm.source[(0, seed)], image)  # the source too: flipped or not, no photometric change
    assert within(flips, runs, 0.5) and border and middle
    batch = next(iter(dm.train_dataloader()["target"]))
    assert batch["valid"].dtype == torch.uint8 and batch["valid"].shape == (2, 32, 32)
    plain = DomainDataModule(str(tmp_path / "src"), str(tmp_path / "tgt"), crop_size=(32, 32))
    plain.setup("fit")
    for seed in range(20):  # target_augment none (the default): never flipped, no valid key
        sample = plain.target[(0, seed)]
        assert "valid" not in sample and not located(sample, image)[2]


def test_margins_are_in_pixels_of_the_resized_target(tmp_path):
    image = coordinate_image(64, 96)
    write_folder_domain(tmp_path / "src", [np.zeros((64, 96), np.uint8)], [image])
    write_folder_domain(tmp_path / "tgt", [np.zeros((64, 96), np.uint8)], [image])
    dm = DomainDataModule(str(tmp_path / "src"), str(tmp_path / "tgt"), resize=(100, 200), target_resize=(30, 40),
                          keep_ratio=True, pseudo_label_margins=(2, 6, 1, 0), batch_size=1)
    dm.setup("fit")
    target, source = dm.target[(0, 1)], dm.source[(0, 1)]
    assert tuple(target["image"].shape[1:]) == (27, 40) == mmcv_rescale(64, 96, (30, 40))
    assert tuple(source["image"].shape[1:]) == (100, 150) == mmcv_rescale(64, 96, (100, 200))
    assert np.array_equal(target["valid"].numpy(), official_valid((27, 40), (2, 6, 1, 0)))


@pytest.mark.parametrize(("key", "value", "error"), [
    ("target_augment", "bogus", DataError), ("target_augment", {"__class_fullname__": "Nope"}, DataError),
    ("target_resize", (0, 64), DataError), ("resize", (64, 64, 3), DataError),
    ("cat_max_ratio", 0.0, DataError), ("cat_max_ratio", 1.5, DataError),
    ("pseudo_label_margins", (1, 2, 3), DataError), ("pseudo_label_margins", (-1, 0, 0, 0), DataError),
    ("rare_class_sampling.min_pixels", -1, ConfigError), ("rare_class_sampling.min_crop_ratio", -0.5, ConfigError)])
def test_bad_values_name_their_key(tiny_pair, key, value, error):
    with pytest.raises(error) as caught:
        if key.startswith("rare_class_sampling."):
            RareClassSampling(**{key.split(".")[1]: value})
        else:
            DomainDataModule(str(tiny_pair / "source"), str(tiny_pair / "target"), **{key: value})
    message = str(caught.value)
    assert f"data.init_args.{key}" in message and "\n" not in message, message
