"""GTA5 and Cityscapes loaders on tiny trees written in the official layouts."""

import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from trees import write_tiny_cityscapes, write_tiny_gta5

from adapt.data.cityscapes import CITYSCAPES_CLASSES, CityscapesDataset, label_id_palette
from adapt.data.gta5 import GTA5Dataset
from adapt.data.labels import IGNORE_INDEX
from adapt.errors import DataError

# The standard 19-class map (Cordts et al. 2016), typed by hand: label id -> train id.
STANDARD = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
            27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
         "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def test_label_id_to_train_id_map():
    expected = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in STANDARD.items():
        expected[label_id] = train_id
    lut = CITYSCAPES_CLASSES.lookup_table()  # the label id -> train id table of every Cityscapes layout
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert np.array_equal(lut, expected)
    assert (lut[7], lut[8], lut[11], lut[26], lut[33]) == (0, 1, 2, 13, 18)
    assert all(lut[i] == 255 for i in [*range(7), 9, 10, 14, 15, 16, 18, 29, 30, *range(34, 256)])
    assert CITYSCAPES_CLASSES.names == NAMES and CITYSCAPES_CLASSES.num_classes == 19
    assert CITYSCAPES_CLASSES.ids == tuple(STANDARD)


def test_gta5_palettised_labels_read_as_indices(tmp_path):
    write_tiny_gta5(tmp_path, num=2)
    dataset = GTA5Dataset(tmp_path)
    assert dataset.classes is CITYSCAPES_CLASSES and dataset.unpaired == [] and len(dataset) == 2
    sample = dataset[0]
    assert sample["name"] == "00001" and sample["image"].shape == (3, 52, 96)
    assert sample["image"].dtype == torch.float32 and 0 <= sample["image"].min() <= sample["image"].max() <= 1
    with Image.open(tmp_path / "labels" / "00001.png") as label:
        assert label.mode == "P"
        indices = np.asarray(label)
    assert sample["mask"].dtype == torch.int64
    assert np.array_equal(sample["mask"].numpy(), CITYSCAPES_CLASSES.lookup_table()[indices])
    assert set(np.unique(sample["mask"].numpy())) <= {*range(19), 255}
    colours = cv2.imread(str(tmp_path / "labels" / "00001.png"), cv2.IMREAD_UNCHANGED)  # cv2 expands the palette
    assert colours.shape == (52, 96, 3)
    assert np.array_equal(colours[..., ::-1], label_id_palette()[indices])  # BGR colours, not label ids
    road = indices == 7
    assert road.any() and (colours[road] == (128, 64, 128)).all()  # road: colour (128, 64, 128), index 7


def test_gta5_grey_labels_and_unlabelled(tmp_path):
    write_tiny_gta5(tmp_path, num=2, palette=False)
    image, mask = GTA5Dataset(tmp_path).load(1)
    ids = np.asarray(Image.open(tmp_path / "labels" / "00002.png"))
    assert image.dtype == np.uint8 and image.shape == (52, 96, 3)
    assert mask.dtype == np.uint8 and np.array_equal(mask, CITYSCAPES_CLASSES.lookup_table()[ids])
    shutil.rmtree(tmp_path / "labels")
    dataset = GTA5Dataset(tmp_path, labels=False)
    assert len(dataset) == 2 and "mask" not in dataset[0]


def test_gta5_unpaired_and_list_file(tmp_path):
    write_tiny_gta5(tmp_path, num=4)
    (tmp_path / "labels" / "00002.png").unlink()
    shutil.copy(tmp_path / "labels" / "00003.png", tmp_path / "labels" / "00009.png")  # a label without image
    with pytest.warns(UserWarning, match="skipping 2 unpaired"):
        dataset = GTA5Dataset(tmp_path)
    assert dataset.unpaired == ["00002", "00009"]
    assert [dataset[i]["name"] for i in range(len(dataset))] == ["00001", "00003", "00004"]
    (tmp_path / "list.txt").write_text("00004.png\n00002.png\n\n00001\n")
    with pytest.warns(UserWarning):
        dataset = GTA5Dataset(tmp_path, list_file=tmp_path / "list.txt")
    assert dataset.names == ["00004", "00001"]  # listed order; 00002 has no label: skipped
    (tmp_path / "list.txt").write_text("00004\n00077\n")
    with pytest.raises(DataError, match="list.txt: 1 listed images.*first: 00077"):
        GTA5Dataset(tmp_path, list_file=tmp_path / "list.txt")
    for name in ("00001", "00003", "00004"):
        (tmp_path / "labels" / f"{name}.png").unlink()
    with pytest.raises(DataError, match="no image .* has a label"):
        GTA5Dataset(tmp_path)


def test_gta5_size_mismatch_names_the_label(tmp_path):
    write_tiny_gta5(tmp_path, num=1)
    label = tmp_path / "labels" / "00001.png"
    Image.open(label).crop((0, 0, 90, 50)).save(label)
    with pytest.raises(DataError, match=r"labels/00001.png: label is 90x50 .* resize or drop the pair"):
        GTA5Dataset(tmp_path)[0]
    with pytest.raises(DataError, match="folder not found"):
        GTA5Dataset(tmp_path / "nowhere")


def test_cityscapes_layout_names_and_mapping(tmp_path):
    paths = write_tiny_cityscapes(tmp_path, split="val", cities=("bremen", "aachen"), per_city=2)
    write_tiny_cityscapes(tmp_path, split="train", cities=("zurich",), per_city=1)
    assert all(p.name.endswith("_leftImg8bit.png") for p in paths) and len(paths) == 4
    dataset = CityscapesDataset(tmp_path)  # split="val"
    assert dataset.classes is CITYSCAPES_CLASSES
    assert dataset.names == ["aachen_000000_000019", "aachen_000001_000019",
                             "bremen_000000_000019", "bremen_000001_000019"]
    sample = dataset[2]
    assert sample["name"] == "bremen_000000_000019" and sample["image"].shape == (3, 64, 128)
    assert sample["image"].dtype == torch.float32 and 0 <= sample["image"].min() <= sample["image"].max() <= 1
    ids = np.asarray(Image.open(tmp_path / "gtFine/val/bremen/bremen_000000_000019_gtFine_labelIds.png"))
    assert sample["mask"].dtype == torch.int64
    assert np.array_equal(sample["mask"].numpy(), CITYSCAPES_CLASSES.lookup_table()[ids])
    image = np.array(Image.open(tmp_path / "leftImg8bit/val/bremen/bremen_000000_000019_leftImg8bit.png"))
    assert torch.equal(sample["image"], torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    train = CityscapesDataset(tmp_path, split="train", labels=False)
    assert train.names == ["zurich_000000_000019"] and "mask" not in train[0]


def test_cityscapes_list_file(tmp_path):
    write_tiny_cityscapes(tmp_path, per_city=2)
    (tmp_path / "val.txt").write_text("leftImg8bit/val/bremen/bremen_000001_000019_leftImg8bit.png\n"
                                      "aachen/aachen_000000_000019_leftImg8bit.png\n"
                                      "bremen_000000_000019\n")
    dataset = CityscapesDataset(tmp_path, list_file=tmp_path / "val.txt")
    assert dataset.names == ["bremen_000001_000019", "aachen_000000_000019", "bremen_000000_000019"]
    assert dataset[1]["name"] == "aachen_000000_000019"
    (tmp_path / "val.txt").write_text("lindau_000000_000019\n")
    with pytest.raises(DataError, match="val.txt: 1 listed images.*lindau_000000_000019"):
        CityscapesDataset(tmp_path, list_file=tmp_path / "val.txt")


@pytest.mark.parametrize("problem, words", [
    ("no_split", r"leftImg8bit/train: folder not found"),
    ("empty_split", r"leftImg8bit/val: no \*/\*_leftImg8bit.png images"),
    ("no_label", r"gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png: label not found \(1 of 4"),
    ("size", r"aachen_000000_000019_gtFine_labelIds.png: label is 128x32 .* same size"),
])
def test_cityscapes_errors_name_the_file(tmp_path, problem, words):
    write_tiny_cityscapes(tmp_path)
    split, label = "val", tmp_path / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
    if problem == "no_split":
        split = "train"
    elif problem == "empty_split":
        for city in ("aachen", "bremen"):
            shutil.rmtree(tmp_path / "leftImg8bit" / "val" / city)
    elif problem == "no_label":
        label.unlink()
    elif problem == "size":
        Image.open(label).crop((0, 0, 128, 32)).save(label)
    with pytest.raises(DataError, match=words):
        CityscapesDataset(tmp_path, split=split)[0]
