"""`adapt data check`: every problem kind, in each layout, reported by name with a non-zero exit; clean trees pass."""

import re

import numpy as np
import pytest
import yaml
from conftest import adapt_main
from PIL import Image
from trees import write_tiny_cityscapes, write_tiny_gta5

from adapt.data.check import check_dataset, format_report
from adapt.data.cityscapes import IMAGE_SUFFIX, LABEL_SUFFIX
from adapt.errors import DataError

FOLDER_CLASSES = {"ignore_index": 0, "classes": [{"id": 1, "name": "sky"}, {"id": 2, "name": "road"},
                                                 {"id": 3, "name": "car"}]}


def write_folder(root, num=6, size=(20, 30), seed=0):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.yaml").write_text(yaml.safe_dump(FOLDER_CLASSES))
    rng = np.random.default_rng(seed)
    for i in range(num):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"img{i}.png")
        Image.fromarray(rng.integers(0, 4, size, dtype=np.uint8)).save(root / "labels" / f"img{i}.png")


def rewrite_label(path, change):
    """Apply ``change`` to the label's values and save it in its own mode (palettised GTA5 labels stay "P")."""
    with Image.open(path) as label:
        mode, palette, values = label.mode, label.getpalette(), change(np.array(label))
    image = Image.fromarray(values)
    if mode == "P":
        image = Image.frombytes("P", values.shape[::-1], np.ascontiguousarray(values).tobytes())
        image.putpalette(palette)
    image.save(path)


def break_tree(root, images, labels, orphan, bad_value):
    """One problem per pair (the last pair stays clean); returns problem kind -> file relative to ``root``."""
    labels[0].unlink()
    images[1].write_bytes(b"this is not a PNG")
    labels[2].write_bytes(labels[2].read_bytes()[:60])
    rewrite_label(labels[3], lambda v: v[:-4])
    rewrite_label(labels[4], lambda v: np.where(np.arange(v.shape[1]) < 3, bad_value, v).astype(np.uint8))
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(labels[5].read_bytes())
    rel = lambda p: str(p.relative_to(root))  # noqa: E731
    return {"missing_label": rel(images[0]), "unreadable_image": rel(images[1]), "unreadable_label": rel(labels[2]),
            "size_mismatch": rel(labels[3]), "bad_label_values": rel(labels[4]), "orphan_label": rel(orphan)}


def broken(kind, root):
    """A tree of ``kind`` with every problem; returns the expected problems."""
    if kind == "folder":
        write_folder(root)
        names = [f"img{i}" for i in range(6)]
        images = [root / "images" / f"{n}.png" for n in names]
        labels = [root / "labels" / f"{n}.png" for n in names]
        return break_tree(root, images, labels, root / "labels" / "ghost.png", bad_value=7)
    if kind == "gta5":
        write_tiny_gta5(root, num=6)
        images = sorted((root / "images").glob("*.png"))
        labels = sorted((root / "labels").glob("*.png"))
        return break_tree(root, images, labels, root / "labels" / "00099.png", bad_value=40)
    images = write_tiny_cityscapes(root, "val", cities=("aachen", "bremen"), per_city=3, size=(32, 64))
    labels = [root / "gtFine" / "val" / p.parent.name / p.name.replace(IMAGE_SUFFIX, LABEL_SUFFIX) for p in images]
    orphan = root / "gtFine" / "val" / "bremen" / f"bremen_000099_000019{LABEL_SUFFIX}"
    return break_tree(root, images, labels, orphan, bad_value=200)


def assert_reported(expected, code, out):
    assert code == 1, out
    assert "PROBLEMS: 6 in 6 kinds" in out, out
    for problem, name in expected.items():
        line = next((l for l in out.splitlines() if f"({problem}): 1" in l), None)
        assert line is not None, (problem, out)
        assert name in out.split(line, 1)[1].splitlines()[1], (problem, name, out)
    assert "good pairs" in out and "class pixel frequencies" in out


def test_cityscapes_problems_through_the_cli(tmp_path, capsys):
    expected = broken("cityscapes", tmp_path)
    code, out, _ = adapt_main(capsys, "data", "check", "cityscapes", str(tmp_path), "--split", "val")
    assert_reported(expected, code, out)
    assert "values 200" in out and "label 64x28, image 64x32" in out
    assert "6 samples, 6 images, 5 labels, 1 good pairs" in out  # only the last pair is intact


@pytest.mark.parametrize("kind", ["folder", "gta5"])
def test_folder_and_gta5_problems(kind, tmp_path, capsys):
    expected = broken(kind, tmp_path)
    code, out, _ = adapt_main(capsys, "data", "check", kind, str(tmp_path))
    assert_reported(expected, code, out)
    report = check_dataset(kind, tmp_path)
    assert {k: v for k, v in report["problems"].items()} == {k: [v] for k, v in expected.items()}
    assert report["counts"]["pairs"] == 1


@pytest.mark.parametrize("kind", ["folder", "gta5", "cityscapes"])
def test_clean_trees_pass_and_print_frequencies(kind, tmp_path, capsys):
    match kind:
        case "folder":
            write_folder(tmp_path)
        case "gta5":
            write_tiny_gta5(tmp_path, num=3)
        case "cityscapes":
            write_tiny_cityscapes(tmp_path, "val", per_city=1, size=(32, 64))  # holds 255 (ignore): allowed
    code, out, err = adapt_main(capsys, "data", "check", kind, str(tmp_path))
    assert code == 0, out + err
    assert "no problems found" in out and "class pixel frequencies" in out
    # the printed percentage of each class, recomputed from the label files written above
    if kind == "folder":
        label_files, ids = sorted((tmp_path / "labels").glob("*.png")), {"sky": 1, "road": 2, "car": 3}
    else:
        from adapt.data.cityscapes import CITYSCAPES_CLASSES

        label_files = sorted(tmp_path.glob("labels/*.png" if kind == "gta5" else f"gtFine/val/*/*{LABEL_SUFFIX}"))
        ids = dict(zip(CITYSCAPES_CLASSES.names, CITYSCAPES_CLASSES.ids))
    assert label_files
    values = np.concatenate([np.asarray(Image.open(p)).ravel() for p in label_files])
    labelled = np.isin(values, list(ids.values())).sum()
    assert labelled > 0
    for name in ("road", "sky"):
        lines = re.findall(rf"^  {name} +(\d+\.\d\d)$", out, flags=re.MULTILINE)
        assert len(lines) == 1, out  # one frequency line for the class, its value with two decimals
        expected = 100 * (values == ids[name]).sum() / labelled
        assert abs(float(lines[0]) - expected) <= 0.005 + 1e-9, (name, lines[0], expected)


def test_frequencies_split_and_examples(tmp_path):
    write_folder(tmp_path, num=8)
    values = np.concatenate([np.asarray(Image.open(p)).ravel() for p in sorted((tmp_path / "labels").glob("*"))])
    report = check_dataset("folder", tmp_path)
    labelled = np.isin(values, [1, 2, 3]).sum()
    assert report["counts"]["labelled_pixels"] == labelled and report["counts"]["label_pixels"] == values.size
    for name, cls in (("sky", 1), ("road", 2), ("car", 3)):
        assert abs(report["frequencies"][name] - 100 * (values == cls).sum() / labelled) < 1e-3

    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "val.txt").write_text("img0\nghost\n")
    report = check_dataset("folder", tmp_path, "val")
    assert report["problems"] == {"missing_image": ["ghost"]} and report["counts"]["samples"] == 2

    for label in (tmp_path / "labels").glob("img*.png"):
        label.unlink()
    text = format_report(check_dataset("folder", tmp_path))
    assert "image without a label (missing_label): 8" in text and "... and 3 more" in text
    assert "class pixel frequencies: no labelled pixels" in text


def test_missing_or_empty_root(tmp_path, capsys):
    with pytest.raises(DataError, match="dataset folder not found"):
        check_dataset("gta5", tmp_path / "nowhere")
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no .png/.jpg images found"):
        check_dataset("gta5", tmp_path)
    code, out, err = adapt_main(capsys, "data", "check", "cityscapes", str(tmp_path))
    assert code == 2 and err.startswith("adapt: error: ") and "leftImg8bit" in err
    assert len(err.strip().splitlines()) == 1
