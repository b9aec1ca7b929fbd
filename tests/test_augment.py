import albumentations as A
import numpy as np
import pytest

from adapt.data.augment import PRESETS, _geometry, _photometric, build_augment, seed_augment
from adapt.data.labels import IGNORE_INDEX
from adapt.errors import DataError


def blocks(height=96, width=128, seed=0, cell=16):
    """A label map of cell x cell blocks (values 0..9) and an image whose every channel is 20 * label."""
    rng = np.random.default_rng(seed)
    label = np.kron(rng.integers(0, 10, (height // cell, width // cell)), np.ones((cell, cell), int)).astype(np.uint8)
    return np.dstack([label * 20] * 3).astype(np.uint8), label


@pytest.mark.parametrize("preset", PRESETS)
def test_geometry_moves_image_and_mask_together(preset):
    pipeline = A.Compose(_geometry(preset) + [A.RandomCrop(64, 64, pad_if_needed=True, fill_mask=IGNORE_INDEX)])
    seed_augment(pipeline, 1)
    for seed in range(20):
        image, label = blocks(seed=seed, cell=32)
        out = pipeline(image=image, mask=label)
        mask, img = out["mask"], out["image"][..., 0].astype(int)
        labelled = mask != IGNORE_INDEX
        assert mask.shape == img.shape == (64, 64)
        # image pixels follow the mask except along block edges, where bilinear resampling blends neighbours
        agree = np.abs(img - 20 * mask.astype(int)) <= 1
        assert agree[labelled].mean() > 0.9
        shifted = np.abs(np.roll(img, 3, axis=1) - 20 * mask.astype(int)) <= 1  # what a misalignment would give
        assert shifted[labelled].mean() < agree[labelled].mean() - 0.03 or len(np.unique(mask)) == 1


@pytest.mark.parametrize("preset", PRESETS)
def test_photometric_leaves_mask_untouched(preset):
    pipeline = A.Compose(_photometric(preset))
    seed_augment(pipeline, 2)
    changed = 0
    for seed in range(20):
        image, label = blocks(seed=seed)
        image = (image + np.random.default_rng(seed).integers(0, 50, image.shape)).astype(np.uint8)
        out = pipeline(image=image, mask=label.copy())
        assert np.array_equal(out["mask"], label)
        changed += not np.array_equal(out["image"], image)
    assert changed == 0 if preset in ("none", "flip") else changed >= 10  # flip: no photometric change at all


def test_full_strong_preset_keeps_mask_values_and_shape():
    pipeline = build_augment("strong", crop_size=(48, 80))
    seed_augment(pipeline, 3)
    for seed in range(10):
        image, label = blocks(seed=seed)
        out = pipeline(image=image, mask=label)
        assert out["image"].shape == (48, 80, 3) and out["image"].dtype == np.uint8
        assert out["mask"].shape == (48, 80)
        assert set(np.unique(out["mask"])) <= set(np.unique(label)) | {IGNORE_INDEX}


def test_seeding_makes_pipelines_reproducible():
    image, label = blocks()
    results = []
    for _ in range(2):
        pipeline = build_augment("strong", crop_size=(64, 64))
        seed_augment(pipeline, 123)
        results.append([pipeline(image=image, mask=label)["image"] for _ in range(3)])
    assert all(np.array_equal(a, b) for a, b in zip(*results))
    other = build_augment("strong", crop_size=(64, 64))
    seed_augment(other, 124)
    assert not all(np.array_equal(a, other(image=image, mask=label)["image"]) for a in results[0])


def test_custom_pipeline_inline_and_from_file(tmp_path):
    custom = A.Compose([A.HorizontalFlip(p=1.0)])
    image, label = blocks()
    inline = build_augment(A.to_dict(custom)["transform"])
    assert np.array_equal(inline(image=image, mask=label)["mask"], label[:, ::-1])
    path = tmp_path / "pipeline.yaml"
    A.save(custom, str(path), data_format="yaml")
    from_file = build_augment(str(path), crop_size=(32, 32))
    assert from_file(image=image, mask=label)["mask"].shape == (32, 32)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(DataError, match=r"^data\.init_args\.augment: 'strongest' is neither a preset"):
        build_augment("strongest")
    with pytest.raises(DataError, match=r"^data\.init_args\.target_augment: 'x' is neither a preset"):
        build_augment("x", key="data.init_args.target_augment")


def test_flip_preset_flips_half_the_images_and_nothing_else():
    image, label = blocks()
    pipeline = build_augment("flip")
    assert [type(t).__name__ for t in pipeline.pipeline.transforms] == ["HorizontalFlip"]
    pipeline.set_random_seed(0)
    flips, runs = 0, 400
    for _ in range(runs):
        out = pipeline(image=image, mask=label)
        flipped = np.array_equal(out["mask"], label[:, ::-1])
        assert np.array_equal(out["image"], image[:, ::-1] if flipped else image)
        flips += flipped
    assert abs(flips - runs / 2) <= 4 * np.sqrt(runs / 4)  # mmseg RandomFlip(prob=0.5): binomial bounds
