import shutil

import cv2
import numpy as np
import pytest
import torch

from adapt.data.folder import FolderDataset
from adapt.data.labels import IGNORE_INDEX
from adapt.errors import DataError


def make_folder(root, names=("a", "b"), size=(20, 30), classes="ignore_index: 9\nclasses: [{id: 2, name: x}, {id: 5, name: y}]\n"):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.yaml").write_text(classes)
    rng = np.random.default_rng(0)
    for name in names:
        cv2.imwrite(str(root / "images" / f"{name}.png"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "labels" / f"{name}.png"), rng.choice([2, 5, 9], size).astype(np.uint8))
    return root


def test_sample_contract_and_id_mapping(tmp_path):
    root = make_folder(tmp_path / "d")
    dataset = FolderDataset(root)
    sample = dataset[0]
    assert sample["image"].shape == (3, 20, 30) and sample["image"].dtype == torch.float32
    assert 0 <= sample["image"].min() and sample["image"].max() <= 1
    assert sample["mask"].dtype == torch.int64 and sample["name"] == "a"
    raw = cv2.imread(str(root / "labels" / "a.png"), cv2.IMREAD_UNCHANGED)
    expected = np.full(raw.shape, IGNORE_INDEX)
    expected[raw == 2], expected[raw == 5] = 0, 1  # ids 2, 5 -> train indices 0, 1; 9 (ignore) -> 255
    assert np.array_equal(sample["mask"].numpy(), expected)
    image = cv2.cvtColor(cv2.imread(str(root / "images" / "a.png")), cv2.COLOR_BGR2RGB)
    assert torch.allclose(sample["image"], torch.from_numpy(image).permute(2, 0, 1).float() / 255)


def test_unlabelled_and_split(tmp_path):
    root = make_folder(tmp_path / "d", names=("a", "b", "c"))
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("c\na\n")
    shutil.rmtree(root / "labels")
    dataset = FolderDataset(root, split="val", labels=False)
    assert [dataset[i]["name"] for i in range(len(dataset))] == ["c", "a"]
    assert "mask" not in dataset[0]


@pytest.mark.parametrize("problem, words", [
    ("no_images", "folder not found"),
    ("no_label", "label not found"),
    ("size", "same size"),
    ("corrupt", "cannot decode image"),
    ("split", "split list not found"),
    ("value", "are neither class ids"),
    ("orphan", "label without an image"),
])
def test_bad_folders_name_the_file(tmp_path, problem, words):
    root = make_folder(tmp_path / "d")
    split = None
    if problem == "no_images":
        shutil.rmtree(root / "images")
    elif problem == "no_label":
        (root / "labels" / "b.png").unlink()
    elif problem == "size":
        cv2.imwrite(str(root / "labels" / "a.png"), np.zeros((10, 10), np.uint8))
    elif problem == "corrupt":
        (root / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    elif problem == "split":
        split = "missing"
    elif problem == "value":  # 7 is neither a listed id (2, 5) nor the ignore index (9)
        cv2.imwrite(str(root / "labels" / "a.png"), np.full((20, 30), 7, np.uint8))
    elif problem == "orphan":
        cv2.imwrite(str(root / "labels" / "z.png"), np.full((20, 30), 2, np.uint8))
    with pytest.raises(DataError) as err:
        dataset = FolderDataset(root, split=split)
        dataset[0]
    assert words in str(err.value) and str(root) in str(err.value)


def test_bad_images_skip_takes_the_next_sample_and_counts(tmp_path, capsys):
    root = make_folder(tmp_path / "d", names=("a", "b", "c"))
    (root / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dataset = FolderDataset(root)
    with pytest.raises(DataError, match="b.png: cannot decode image"):
        dataset[1]  # the default policy: stop, naming the file
    dataset.bad_images = "skip"
    sample = dataset[1]
    assert "b.png: cannot decode image" in capsys.readouterr().err
    assert sample["name"] == "c" and sample["skipped"] == 1
    assert dataset[0]["skipped"] == 0 and dataset[0]["name"] == "a"
