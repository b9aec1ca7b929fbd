"""The embedded synthetic domain pair (adapt.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from adapt.data.synthetic import CLASS_NAMES, IGNORE_INDEX, render_image, render_layout, write_pair

SIZE = (96, 128)


def _pair(seed: int, index: int = 0):
    rng = np.random.default_rng([seed, index])
    label = render_layout(rng, SIZE)
    return label, render_image(label, "source", rng), render_image(label, "target", rng)


def test_class_names():
    assert len(CLASS_NAMES) == 10 and len(set(CLASS_NAMES)) == 10
    assert CLASS_NAMES[0] == "road" and CLASS_NAMES[-1] == "sign"
    assert IGNORE_INDEX == 255


def test_shapes_dtypes_and_values():
    label, source, target = _pair(0)
    assert label.shape == SIZE and label.dtype == np.uint8
    assert source.shape == (*SIZE, 3) and source.dtype == np.uint8
    assert target.shape == (*SIZE, 3) and target.dtype == np.uint8
    assert label.max() < len(CLASS_NAMES)
    other = render_layout(np.random.default_rng(3), (40, 60))
    assert other.shape == (40, 60) and other.max() < len(CLASS_NAMES)


def test_deterministic_by_seed():
    a, b = _pair(7), _pair(7)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = _pair(8)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1]) and not np.array_equal(a[2], c[2])


def test_bad_style():
    with pytest.raises(ValueError, match="style"):
        render_image(np.zeros(SIZE, np.uint8), "cartoon", np.random.default_rng(0))


def test_most_classes_present():
    labels = [render_layout(np.random.default_rng([5, i]), SIZE) for i in range(10)]
    present = np.array([np.bincount(lab.ravel(), minlength=10) > 0 for lab in labels])  # [image, class]
    assert present.any(axis=0).all(), "every class should appear somewhere in 10 images"
    big = [CLASS_NAMES.index(c) for c in ("road", "sidewalk", "building", "sky", "terrain")]
    assert present[:, big].all(), "the large classes are in every image"
    assert present.sum(axis=1).mean() >= 8


def test_styles_differ_per_class():
    """Same layout in both styles: each class's mean colour moves a lot, and some brightness orders swap."""
    diffs, swaps = [], []
    for i in range(4):
        label, source, target = _pair(11, i)
        means = {}
        for c in range(len(CLASS_NAMES)):
            m = label == c
            if m.sum() >= 30:
                s, t = source[m].mean(0), target[m].mean(0)
                if CLASS_NAMES[c] != "pole":  # dark grey in both styles; its brightness rank changes instead
                    diffs.append(np.abs(s - t).mean())
                means[CLASS_NAMES[c]] = (s.mean(), t.mean())
        road, walk, pole = means["road"], means["sidewalk"], means.get("pole")
        swaps.append((road[0] < walk[0]) and (road[1] > walk[1]))
        if pole is not None:
            swaps.append((pole[0] < walk[0]) and (pole[1] > walk[1]))
    assert min(diffs) > 25, f"per-class mean colours should differ strongly, got {min(diffs):.1f}"
    assert np.mean(diffs) > 60
    assert all(swaps), "road and pole are darker than sidewalk in the source, brighter in the target"
    # target has sensor noise and texture, source is flat: compare local variation inside the road
    label, source, target = _pair(12)
    road = label == 0
    assert target[road].std(0).mean() > source[road].std(0).mean()


def test_write_pair(tmp_path):
    src, tgt = write_pair(tmp_path / "a", num_images=6, seed=3, val_fraction=0.25)
    assert (src, tgt) == (tmp_path / "a" / "source", tmp_path / "a" / "target")
    for root, prefix in ((src, "src"), (tgt, "tgt")):
        names = [f"{prefix}_{i:05d}" for i in range(6)]
        assert sorted(p.stem for p in (root / "images").glob("*.png")) == names
        assert sorted(p.stem for p in (root / "labels").glob("*.png")) == names
        train = (root / "splits" / "train.txt").read_text().split()
        val = (root / "splits" / "val.txt").read_text().split()
        assert val == names[-2:] and train == names[:-2]
        text = (root / "classes.yaml").read_text()
        assert text.startswith("#")
        doc = yaml.safe_load(text)
        assert doc["ignore_index"] == 255
        assert [c["id"] for c in doc["classes"]] == list(range(10))
        assert tuple(c["name"] for c in doc["classes"]) == CLASS_NAMES
        with Image.open(root / "images" / f"{names[0]}.png") as im:
            assert im.mode == "RGB" and im.size == (128, 96)
        with Image.open(root / "labels" / f"{names[0]}.png") as lab:
            assert lab.mode == "L" and lab.size == (128, 96)
            assert np.asarray(lab).max() < 10
    # the PNG holds RGB (not BGR) and matches render_image for the same per-image stream
    rng = np.random.default_rng([3, 0, 1])
    label = render_layout(rng, SIZE)
    image = render_image(label, "source", rng)
    np.testing.assert_array_equal(np.asarray(Image.open(src / "labels" / "src_00001.png")), label)
    np.testing.assert_array_equal(np.asarray(Image.open(src / "images" / "src_00001.png")), image)
    # source and target use different scenes
    assert not np.array_equal(np.asarray(Image.open(src / "labels" / "src_00000.png")),
                              np.asarray(Image.open(tgt / "labels" / "tgt_00000.png")))


def test_write_pair_reproducible(tmp_path):
    write_pair(tmp_path / "a", num_images=3, seed=1)
    write_pair(tmp_path / "b", num_images=5, seed=1)  # image i does not depend on num_images
    write_pair(tmp_path / "c", num_images=3, seed=2)
    for rel in ("source/images/src_00002.png", "source/labels/src_00002.png", "target/images/tgt_00001.png",
                "target/labels/tgt_00000.png", "source/classes.yaml"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert (tmp_path / "a/source/images/src_00000.png").read_bytes() != \
        (tmp_path / "c/source/images/src_00000.png").read_bytes()
