"""The one paired-file check (adapt.data.pairs.pair_files) and the one table builder (adapt.data.labels), seen from
every dataset kind: the same one-line errors naming the file, the same tables and masks."""

import numpy as np
import pytest
from PIL import Image
from trees import write_tiny_acdc, write_tiny_carla, write_tiny_cityscapes, write_tiny_gta5, write_tiny_synthia

from adapt.data.carla import CARLA_TO_TRAIN, carla_lut, carla_valid
from adapt.data.cityscapes import CITYSCAPES_CLASSES, CityscapesDataset, label_id_values
from adapt.data.datasets import label_format, open_dataset
from adapt.data.labels import IGNORE_INDEX, ClassSet, lookup_table, value_mask
from adapt.data.pairs import Tree, pair_files
from adapt.data.synthia import SYNTHIA_TO_TRAIN, synthia_lut, synthia_valid
from adapt.errors import DataError


def write_folder(root, names=("a", "b", "c")):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.yaml").write_text("ignore_index: 9\nclasses: [{id: 2, name: x}, {id: 5, name: y}]\n")
    for name in names:
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.full((4, 6), 2, np.uint8)).save(root / "labels" / f"{name}.png")


# kind -> (write a tiny tree, its image folder, the label file of one of its images)
TREES = {
    "folder": (write_folder, "images", "labels/b.png"),
    "synthia": (write_tiny_synthia, "RGB", "GT/LABELS/0000001.png"),
    "carla": (write_tiny_carla, "rgb", "semantic/00001007.png"),
    "gta5": (write_tiny_gta5, "images", "labels/00002.png"),
}


@pytest.mark.parametrize("kind", TREES)
def test_every_kind_names_a_listed_image_that_is_not_there_the_same_way(kind, tmp_path):
    write, image_dir, _ = TREES[kind]
    write(tmp_path)
    listed = tmp_path / "splits" / "val.txt" if kind == "folder" else tmp_path / "val.txt"
    listed.parent.mkdir(exist_ok=True)
    listed.write_text("ghost\n")
    with pytest.raises(DataError) as err:
        open_dataset(kind, str(tmp_path), "val" if kind == "folder" else str(listed), labels=False)
    assert str(err.value) == f"{listed}: 1 listed images are not in {tmp_path / image_dir} (first: ghost)"


@pytest.mark.parametrize("kind", TREES)
def test_every_kind_names_the_missing_label_file(kind, tmp_path):
    write, _, label = TREES[kind]
    write(tmp_path)
    (tmp_path / label).unlink()
    if kind == "gta5":  # some GTA5 downloads miss pairs: skipped, with a warning that counts them
        with pytest.warns(UserWarning, match="skipping 1 unpaired"):
            dataset = open_dataset(kind, str(tmp_path), None, labels=True)
        assert dataset.unpaired == ["00002"] and "00002" not in dataset.names
        return
    with pytest.raises(DataError, match=r"label not found \(1 of 3 images have no label\); ") as err:
        open_dataset(kind, str(tmp_path), None, labels=True)
    assert str(err.value).startswith(f"{tmp_path / label}: ")
    assert len(open_dataset(kind, str(tmp_path), None, labels=False)) == 3  # unlabelled: no label needed


def test_cityscapes_and_acdc_name_the_mirrored_label_path(tmp_path):
    write_tiny_cityscapes(tmp_path / "cs", per_city=1)
    label = tmp_path / "cs/gtFine/val/bremen/bremen_000000_000019_gtFine_labelIds.png"
    label.unlink()
    with pytest.raises(DataError, match=r"label not found \(1 of 2 images.*gtFine_trainvaltest.zip") as err:
        CityscapesDataset(tmp_path / "cs")
    assert str(err.value).startswith(f"{label}: ")
    (tmp_path / "list.txt").write_text("aachen_000000_000019_leftImg8bit.png\nlindau_000000_000019\n")
    with pytest.raises(DataError, match="list.txt: 1 listed images are not in .*leftImg8bit/val .first: lindau"):
        CityscapesDataset(tmp_path / "cs", labels=False, list_file=tmp_path / "list.txt")
    write_tiny_acdc(tmp_path / "acdc", splits=("val",), per_folder=1)
    label = next((tmp_path / "acdc/gt/rain/val").rglob("*_gt_labelIds.png"))
    label.unlink()
    with pytest.raises(DataError, match=r"label not found \(1 of 4 images.*gt_trainval.zip") as err:
        open_dataset("acdc", str(tmp_path / "acdc"), "val", labels=True)
    assert str(err.value).startswith(f"{label}: ")


def test_pair_files_orphans_and_skipped_pairs(tmp_path):
    images = {n: tmp_path / f"{n}.png" for n in ("a", "b")}
    labels = {"a": tmp_path / "a_label.png", "z": tmp_path / "z_label.png"}
    for path in [*images.values(), *labels.values()]:
        path.touch()
    tree = Tree(["a", "b"], images, labels, [labels["z"]])
    where = lambda name, image: tmp_path / f"{name}_label.png"  # noqa: E731
    with pytest.raises(DataError, match=r"b_label.png: label not found \(1 of 2 images have no label\); add it"):
        pair_files(tree, True, where, tmp_path, "add it")
    pairs = pair_files(tree, True, where, tmp_path, "add it", skip_unlabelled=True)
    assert pairs.names == ["a"] and pairs.label_files == [labels["a"]] and pairs.unpaired == ["b", "z"]
    tree = Tree(["a"], images, labels, [labels["z"]])
    assert pair_files(tree, True, where, tmp_path, "add it").names == ["a"]  # orphans are allowed by default
    with pytest.raises(DataError, match="z_label.png: label without an image"):
        pair_files(tree, True, where, tmp_path, "add it", refuse_orphans=True)
    tree = Tree(["b"], images, {}, [])
    with pytest.raises(DataError, match="no image in .* has a label of the same name"):
        pair_files(tree, True, where, tmp_path, "add it", skip_unlabelled=True)


def test_one_table_builder_for_every_layout(tmp_path):
    by_hand = np.full(256, IGNORE_INDEX, np.uint8)
    by_hand[[7, 2]] = [0, 1]
    assert np.array_equal(ClassSet(("a", "b"), (7, 2), 9).lookup_table(), by_hand)
    assert np.flatnonzero(ClassSet(("a", "b"), (7, 2), 9).valid_values()).tolist() == [2, 7, 9]
    assert np.flatnonzero(ClassSet(("a",), (7,), 300).valid_values()).tolist() == [7]  # ignore beyond 8 bits
    assert np.array_equal(lookup_table(SYNTHIA_TO_TRAIN, 65536), synthia_lut()) and synthia_lut().shape == (65536,)
    assert np.flatnonzero(synthia_valid()).tolist() == list(range(23))
    for tags, table in CARLA_TO_TRAIN.items():
        assert {t: int(carla_lut(tags)[t]) for t in np.flatnonzero(carla_lut(tags) != 255)} == table
        assert carla_valid(tags).sum() == {"0.9.14": 29, "0.9.13": 23}[tags]
    assert np.flatnonzero(label_id_values()).tolist() == [*range(34), 255]
    assert np.flatnonzero(value_mask([-1, 3, 256])).tolist() == [3]
    write_tiny_cityscapes(tmp_path, per_city=1)
    layout = label_format("cityscapes", tmp_path, "val")
    assert np.array_equal(layout.lut, CITYSCAPES_CLASSES.lookup_table())
    assert np.array_equal(layout.valid, label_id_values())
