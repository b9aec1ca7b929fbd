import numpy as np
import pytest

from adapt.data.labels import IGNORE_INDEX, ClassSet, default_palette
from adapt.errors import DataError


def write(tmp_path, text):
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    return path


def test_class_file_round_trip_and_lookup(tmp_path):
    path = write(tmp_path, "ignore_index: 11\nclasses:\n  - {id: 3, name: road}\n  - {id: 0, name: sky}\n"
                           "  - {id: 7, name: car}\n")
    classes = ClassSet.from_yaml(path)
    assert classes.names == ("road", "sky", "car") and classes.ids == (3, 0, 7) and classes.num_classes == 3
    lut = classes.lookup_table()
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    assert lut[3] == 0 and lut[0] == 1 and lut[7] == 2
    assert lut[11] == IGNORE_INDEX and lut[1] == IGNORE_INDEX and lut[255] == IGNORE_INDEX
    classes.to_yaml(tmp_path / "copy.yaml", comment="a copy")
    assert ClassSet.from_yaml(tmp_path / "copy.yaml") == classes


def test_camvid_class_file_reads():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "shared/data/camvid/day/classes.yaml"
    if not path.is_file():
        pytest.skip("../shared/data/camvid not present")
    classes = ClassSet.from_yaml(path)
    assert classes.num_classes == 11 and classes.ignore_index == 11 and classes.names[0] == "sky"


@pytest.mark.parametrize("text, words", [
    ("classes: [{id: 1, name: a}, {id: 1, name: b}]", "duplicate ids"),
    ("classes: [{id: 1, name: a}, {id: 2, name: a}]", "duplicate names"),
    ("classes: [{id: 1, name: a}\n  bad: [", "not valid YAML"),
    ("classes: []", "non-empty 'classes'"),
    ("classes: [{name: a}]", "integer 'id'"),
    ("ignore_index: 1\nclasses: [{id: 1, name: a}]", "differ from ignore_index"),
])
def test_bad_class_files_name_the_file(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as err:
        ClassSet.from_yaml(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_missing_class_file(tmp_path):
    with pytest.raises(DataError, match="class file not found"):
        ClassSet.from_yaml(tmp_path / "nope.yaml")


def test_palette_is_distinct():
    palette = default_palette(19)
    assert palette.shape == (19, 3) and len({tuple(c) for c in palette}) == 19
