"""SYNTHIA, ACDC, Dark Zurich and CARLA loaders on tiny trees written in the official layouts (through open_dataset,
the DataModule and `adapt data check`), and the SYNTHIA 16- / 13-class means of evaluation."""

import json
import math
import re

import cv2
import numpy as np
import pytest
import torch
from conftest import adapt_main
from PIL import Image
from trees import write_tiny_acdc, write_tiny_carla, write_tiny_cityscapes, write_tiny_darkzurich, write_tiny_synthia

from adapt.data.check import check_dataset
from adapt.data.cityscapes import CITYSCAPES_CLASSES
from adapt.data.datasets import open_dataset
from adapt.errors import ConfigError, DataError
from adapt.metrics import CLASS_SUBSETS, check_class_subsets, summarize
from adapt.report import per_class_table

T = {name: i for i, name in enumerate(CITYSCAPES_CLASSES.names)}  # Cityscapes train id by class name

# SYNTHIA-RAND-CITYSCAPES README ids, typed by hand (as DAFormer's tools/convert_datasets/synthia.py maps them)
SYNTHIA = {3: "road", 4: "sidewalk", 2: "building", 21: "wall", 5: "fence", 7: "pole", 15: "traffic light",
           9: "traffic sign", 6: "vegetation", 1: "sky", 10: "person", 17: "rider", 8: "car", 19: "bus",
           12: "motorcycle", 11: "bicycle",
           16: "terrain", 18: "truck", 20: "train"}  # in the table, absent from SYNTHIA-RAND-CITYSCAPES
# CARLA's tags (docs ref_sensors.md), typed by hand; every other tag is ignored
CARLA = {"0.9.14": {1: "road", 2: "sidewalk", 3: "building", 4: "wall", 5: "fence", 6: "pole", 7: "traffic light",
                    8: "traffic sign", 9: "vegetation", 10: "terrain", 11: "sky", 12: "person", 13: "rider",
                    14: "car", 15: "truck", 16: "bus", 17: "train", 18: "motorcycle", 19: "bicycle",
                    24: "road"},  # RoadLine
         "0.9.13": {1: "building", 2: "fence", 4: "person", 5: "pole", 6: "road", 7: "road", 8: "sidewalk",
                    9: "vegetation", 10: "car", 11: "wall", 12: "traffic sign", 13: "sky", 18: "traffic light",
                    22: "terrain"}}


def expected_mask(raw: np.ndarray, table: dict[int, str]) -> np.ndarray:
    out = np.full(raw.shape, 255, dtype=np.int64)
    for value, name in table.items():
        out[raw == value] = T[name]
    return out


def red_channel(path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., 2]  # BGR(A): R is channel 2


def assert_image(sample, size=(16, 24)):
    image = sample["image"]
    assert image.dtype == torch.float32 and image.shape == (3, *size) and 0 <= image.min() <= image.max() <= 1


def test_synthia_maps_every_id_by_the_official_table(tmp_path):
    write_tiny_synthia(tmp_path, num=3)
    label = cv2.imread(str(tmp_path / "GT" / "LABELS" / "0000000.png"), cv2.IMREAD_UNCHANGED)
    assert label.dtype == np.uint16 and label.shape == (16, 24, 3) and label[..., 1].max() > 255  # 16-bit instances
    assert set(np.unique(label[..., 2])) == set(range(23))  # every SYNTHIA id in the first label
    dataset = open_dataset("synthia", str(tmp_path), None, labels=True)
    assert len(dataset) == 3 and dataset.classes is CITYSCAPES_CLASSES
    for i in range(3):
        sample = dataset[i]
        assert_image(sample)
        raw = red_channel(tmp_path / "GT" / "LABELS" / f"{sample['name']}.png")
        assert sample["mask"].dtype == torch.int64
        np.testing.assert_array_equal(sample["mask"].numpy(), expected_mask(raw, SYNTHIA))
    mask = dataset[0]["mask"].numpy()
    assert set(np.unique(mask)) == {*range(19), 255}
    (tmp_path / "list.txt").write_text("RGB/0000002.png\n0000000\n")  # a list file of stems, in its order
    listed = open_dataset("synthia", str(tmp_path), str(tmp_path / "list.txt"), labels=True)
    assert listed.names == ["0000002", "0000000"] and np.array_equal(listed[1]["mask"].numpy(), mask)
    # DAFormer's converter writes *_labelTrainIds.png beside the originals: not a label, not an orphan
    Image.fromarray(np.zeros((16, 24), np.uint8)).save(tmp_path / "GT" / "LABELS" / "0000000_labelTrainIds.png")
    assert len(open_dataset("synthia", str(tmp_path), None, labels=True)) == 3
    assert check_dataset("synthia", tmp_path)["problems"] == {}


@pytest.mark.parametrize("kind, tags", [("carla", "0.9.14"), ("carla_legacy", "0.9.13")])
def test_carla_tags_in_the_red_channel(kind, tags, tmp_path):
    write_tiny_carla(tmp_path, num=3, tags=tags)
    semantic = sorted((tmp_path / "semantic").glob("*.png"))
    assert cv2.imread(str(semantic[0]), cv2.IMREAD_UNCHANGED).shape == (16, 24, 4)  # BGRA, as CARLA saves it
    assert set(np.unique(red_channel(semantic[0]))) == set(range(29 if tags == "0.9.14" else 23))
    dataset = open_dataset(kind, str(tmp_path), None, labels=True)
    assert len(dataset) == 3
    for i, path in enumerate(semantic):
        sample = dataset[i]
        assert_image(sample)
        assert sample["name"] == path.stem
        np.testing.assert_array_equal(sample["mask"].numpy(), expected_mask(red_channel(path), CARLA[tags]))
    assert len(open_dataset(kind, str(tmp_path), None, labels=False)[0]) == 2  # image and name only


def test_acdc_conditions_and_splits(tmp_path):
    write_tiny_acdc(tmp_path, per_folder=2)
    everything = open_dataset("acdc", str(tmp_path), None, labels=True)  # val, all four conditions
    assert everything.split == "val" and len(everything) == 8
    assert {p.parts[-4] for p in everything.images} == {"fog", "night", "rain", "snow"}
    night = open_dataset("acdc", str(tmp_path), "night/val", labels=True)
    assert len(night) == 2 and all(p.parts[-4:-2] == ("night", "val") for p in night.images)
    for i in range(2):
        sample = night[i]
        assert_image(sample)
        label = night.label_files[i]
        assert label.name == f"{sample['name']}_gt_labelIds.png" and label.parts[-5:-2] == ("gt", "night", "val")
        ids = np.asarray(Image.open(label))
        np.testing.assert_array_equal(sample["mask"].numpy(), CITYSCAPES_CLASSES.lookup_table()[ids])
    assert len(open_dataset("acdc", str(tmp_path), "fog,snow/train", labels=True)) == 4
    assert len(open_dataset("acdc", str(tmp_path), "test", labels=False)) == 8  # test: no public labels
    with pytest.raises(DataError, match=r"gt/fog/test/.*label not found.*labels=False"):
        open_dataset("acdc", str(tmp_path), "test", labels=True)
    with pytest.raises(DataError, match="condition mist unknown; choose from fog, night, rain, snow"):
        open_dataset("acdc", str(tmp_path), "mist/val", labels=True)


def test_darkzurich_night_target_and_labelled_val(tmp_path):
    write_tiny_darkzurich(tmp_path, per_folder=2)
    target = open_dataset("darkzurich", str(tmp_path), "train/night", labels=False)
    assert len(target) == 2 and all(p.parts[-4:-2] == ("train", "night") for p in target.images)
    assert "mask" not in target[0]
    assert len(open_dataset("darkzurich", str(tmp_path), "train", labels=False)) == 6  # day, twilight, night
    val = open_dataset("darkzurich", str(tmp_path), None, labels=True)
    assert val.split == "val" and val.names == open_dataset("darkzurich", str(tmp_path), "val/night", True).names
    ids = np.asarray(Image.open(tmp_path / "gt" / "val" / "night" / val.images[0].parent.name /
                                f"{val.names[0]}_gt_labelIds.png"))
    np.testing.assert_array_equal(val[0]["mask"].numpy(), CITYSCAPES_CLASSES.lookup_table()[ids])
    with pytest.raises(DataError, match="only val/night has labels"):
        open_dataset("darkzurich", str(tmp_path), "train/night", labels=True)


def test_datamodule_synthia_source_darkzurich_target(tmp_path):
    from adapt.data import DomainDataModule

    write_tiny_synthia(tmp_path / "synthia", num=3)
    write_tiny_darkzurich(tmp_path / "dz")
    dm = DomainDataModule(str(tmp_path / "synthia"), str(tmp_path / "dz"), target_split="train/night",
                          val_split="val/night", source_kind="synthia", target_kind="darkzurich", batch_size=2)
    assert dm.class_names == list(CITYSCAPES_CLASSES.names)
    dm.setup("fit")
    batch = {name: next(iter(loader)) for name, loader in dm.train_dataloader().items()}
    assert batch["source"]["image"].shape == (2, 3, 16, 24) and batch["source"]["mask"].shape == (2, 16, 24)
    assert "mask" not in batch["target"] and next(iter(dm.val_dataloader()))["mask"].shape[1:] == (16, 24)


TREES = {"synthia": (write_tiny_synthia, None), "carla": (write_tiny_carla, None),
         "carla_legacy": (lambda root: write_tiny_carla(root, tags="0.9.13"), None),
         "acdc": (write_tiny_acdc, "night/val"), "darkzurich": (write_tiny_darkzurich, "val/night")}


@pytest.mark.parametrize("kind", TREES)
def test_data_check_through_the_cli(kind, tmp_path, capsys):
    write, split = TREES[kind]
    write(tmp_path)
    code, out, err = adapt_main(capsys, "data", "check", kind, str(tmp_path), *(["--split", split] if split else []))
    assert code == 0, out + err
    assert "no problems found" in out and f"{kind} dataset {tmp_path}" in out
    masks = np.concatenate([s["mask"].numpy().ravel() for s in open_dataset(kind, str(tmp_path), split, True)])
    labelled = (masks != 255).sum()
    for name in ("road", "sky", "car"):  # the printed shares, recomputed from the masks the dataset serves
        printed = re.findall(rf"^  {name} +(\d+\.\d\d)$", out, flags=re.MULTILINE)
        assert len(printed) == 1 and abs(float(printed[0]) - 100 * (masks == T[name]).sum() / labelled) <= 0.005


def test_data_check_reports_problems_of_the_new_layouts(tmp_path, capsys):
    write_tiny_synthia(tmp_path / "synthia", num=3)
    label = tmp_path / "synthia" / "GT" / "LABELS" / "0000001.png"
    bgr = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    bgr[0, 0, 2] = 300  # not a SYNTHIA id
    cv2.imwrite(str(label), bgr)
    (tmp_path / "synthia" / "GT" / "LABELS" / "0000002.png").unlink()
    code, out, _ = adapt_main(capsys, "data", "check", "synthia", str(tmp_path / "synthia"))
    assert code == 1 and "(bad_label_values): 1" in out and "GT/LABELS/0000001.png  (values 300)" in out
    assert "(missing_label): 1" in out and "RGB/0000002.png" in out

    write_tiny_carla(tmp_path / "carla", num=2)  # a frame converted with CityScapesPalette: colours, not tags
    frame = sorted((tmp_path / "carla" / "semantic").glob("*.png"))[1]
    cv2.imwrite(str(frame), np.full((16, 24, 3), (128, 64, 128), np.uint8)[..., ::-1])
    report = check_dataset("carla", tmp_path / "carla")
    assert report["problems"] == {"bad_label_values": [f"semantic/{frame.name}"]}
    assert report["details"][f"semantic/{frame.name}"] == "values 128"

    write_tiny_acdc(tmp_path / "acdc", splits=("val",), per_folder=1)  # a label moved to another sequence
    (label,) = (tmp_path / "acdc" / "gt" / "rain" / "val").glob("*/*_gt_labelIds.png")
    (label.parent.parent / "GOPR9999").mkdir()
    label.rename(label.parent.parent / "GOPR9999" / label.name)
    report = check_dataset("acdc", tmp_path / "acdc")
    assert set(report["problems"]) == {"missing_label", "orphan_label"} and report["counts"]["pairs"] == 3


@pytest.mark.parametrize("kind, expected", [("synthia", "RGB"), ("carla", "rgb"), ("carla_legacy", "rgb"),
                                            ("acdc", "rgb_anon/fog/val"), ("darkzurich", "rgb_anon/val/night")])
def test_bad_layouts_are_one_line_errors(kind, expected, tmp_path, capsys):
    code, _, err = adapt_main(capsys, "data", "check", kind, str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{tmp_path / expected}: folder not found" in err and "needs ROOT/" in err
    with pytest.raises(DataError, match="folder not found"):
        open_dataset(kind, str(tmp_path), None, labels=False)
    for folder in [expected] if kind != "acdc" else [f"rgb_anon/{c}/val" for c in ("fog", "night", "rain", "snow")]:
        (tmp_path / folder).mkdir(parents=True)  # the folders, but no image in them
    with pytest.raises(DataError, match="no .*images found"):
        open_dataset(kind, str(tmp_path), None, labels=False)


# Per-class IoU (in tenths) chosen for the 19 Cityscapes classes, in train-id order
TENTHS = [9, 8, 9, 2, 3, 4, 5, 6, 9, 1, 10, 7, 5, 9, 0, 6, 0, 4, 6]


def confusion_with_ious(tenths: list[int]) -> torch.Tensor:
    """[20, 20]: class c has TP = tenths[c] and 10 - tenths[c] pixels predicted void (last column), so that its
    IoU is exactly tenths[c] / 10 and no other class gains a false positive."""
    cm = torch.zeros(20, 20, dtype=torch.long)
    for c, t in enumerate(tenths):
        cm[c, c], cm[c, 19] = t, 10 - t
    return cm


def test_synthia_16_and_13_class_means_by_hand():
    names = list(CITYSCAPES_CLASSES.names)
    metrics = summarize(confusion_with_ious(TENTHS), names, ["synthia16", "synthia13"])
    assert metrics["per_class_iou"]["wall"] == 20.0 and metrics["per_class_iou"]["truck"] == 0.0
    # 16 classes: all but terrain (1), truck (0), train (0): 9+8+9+2+3+4+5+6+9+10+7+5+9+6+4+6 = 102 tenths
    assert metrics["miou_16"] == 63.75  # 102 / 16 * 10
    # 13 classes: also without wall (2), fence (3), pole (4): 93 tenths
    assert metrics["miou_13"] == pytest.approx(930 / 13, abs=1e-6)
    assert metrics["miou"] == pytest.approx(1030 / 19, abs=1e-6)  # 19 classes: 103 tenths
    note = metrics["class_subsets"]["synthia13"]
    assert note["metric"] == "miou_13" and len(note["classes"]) == 13 and "wall" not in note["classes"]
    assert len(metrics["class_subsets"]["synthia16"]["classes"]) == 16
    table = per_class_table(metrics)
    assert re.search(r"^mIoU 16 \(synthia16\) +63\.75$", table, re.MULTILINE)
    assert re.search(r"^mIoU 13 \(synthia13\) +71\.54$", table, re.MULTILINE)
    cm = confusion_with_ious(TENTHS)
    cm[T["bus"]] = 0  # bus absent from labels and predictions: no IoU, left out of the means
    assert summarize(cm, names, ["synthia16"])["miou_16"] == 64.0  # (102 - 6) / 15 * 10
    assert "class_subsets" not in summarize(cm, names) and "miou_16" not in summarize(cm, names)
    with pytest.raises(ConfigError, match="--x: synthia16 needs the Cityscapes classes"):
        check_class_subsets(["synthia16"], ["sky", "road"], "--x")
    with pytest.raises(ConfigError, match="class subset 'gta19' unknown"):
        check_class_subsets(["gta19"], names, "--x")


def test_evaluate_predictions_with_class_subsets_through_the_cli(tmp_path, capsys):
    root, preds = tmp_path / "cityscapes", tmp_path / "preds"
    images = write_tiny_cityscapes(root, "val", per_city=1, size=(16, 24))
    preds.mkdir()
    rng = np.random.default_rng(1)
    for path in images:  # predicted label ids: half right, half random
        ids = np.asarray(Image.open(str(path).replace("leftImg8bit", "gtFine").replace("gtFine.png",
                                                                                        "gtFine_labelIds.png")))
        guess = np.where(rng.random(ids.shape) < 0.5, ids, rng.choice(CITYSCAPES_CLASSES.ids, ids.shape))
        Image.fromarray(guess.astype(np.uint8)).save(preds / path.name)
    code, out, err = adapt_main(capsys, "evaluate", "--predictions", str(preds), "--root", str(root), "--kind",
                                "cityscapes", "--class_subsets", "[synthia16,synthia13]", "--output", str(tmp_path))
    assert code == 0, err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key, subset in (("miou_16", "synthia16"), ("miou_13", "synthia13")):
        values = [metrics["per_class_iou"][n] for n in metrics["class_subsets"][subset]["classes"]]
        assert metrics[key] == pytest.approx(np.mean([v for v in values if v is not None]), abs=1e-5)
        assert f"mIoU {len(values)} ({subset})" in out
    code, _, err = adapt_main(capsys, "evaluate", "--predictions", str(preds), "--root", str(root), "--kind",
                              "cityscapes", "--class_subsets", "[synthia19]")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_task_logs_and_evaluate_writes_the_subset_means(tmp_path, capsys):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from adapt.tasks import SegmentationTask

    with pytest.raises(ConfigError, match="model.init_args.class_subsets: synthia16 needs the Cityscapes classes"):
        SegmentationTask(arch="fpn", class_names=["sky", "road"], class_subsets=["synthia16"])
    write_tiny_synthia(tmp_path / "synthia", num=2, size=(32, 32))
    torch.manual_seed(0)
    task = SegmentationTask(arch="fpn", class_names=list(CITYSCAPES_CLASSES.names),
                            class_subsets=["synthia16", "synthia13"])
    loader = DataLoader(open_dataset("synthia", str(tmp_path / "synthia"), None, labels=True), batch_size=2)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    (logged,) = trainer.validate(task, loader, verbose=False)
    for key, subset in (("val/miou_16", "synthia16"), ("val/miou_13", "synthia13")):
        values = [logged[f"val/iou/{n}"] for n in CLASS_SUBSETS[subset][1]]
        assert logged[key] == pytest.approx(np.nanmean([v for v in values if not math.isnan(v)]), abs=1e-4)
    ckpt = tmp_path / "f.ckpt"  # the subsets travel with the checkpoint: evaluate reports them unasked
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, ckpt)
    code, out, err = adapt_main(capsys, "evaluate", "--checkpoint", str(ckpt), "--root", str(tmp_path / "synthia"),
                                "--kind", "synthia", "--plots", "false", "--output", str(tmp_path / "eval"),
                                "--accelerator", "cpu")
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["miou_16"] == pytest.approx(logged["val/miou_16"], abs=1e-4) and "miou_13" in metrics
    assert "mIoU 13 (synthia13)" in out and metrics["kind"] == "synthia"
