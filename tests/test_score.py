"""`adapt evaluate --predictions`: label PNGs from any model, scored like cityscapesscripts' official evaluator."""

import importlib
import json
import math
import shutil

import numpy as np
import pytest
import yaml
from conftest import adapt_main
from PIL import Image
from trees import write_tiny_cityscapes

from adapt.data.cityscapes import CITYSCAPES_CLASSES, LABEL_SUFFIX
from adapt.workflows.score import score_predictions

SIZE = (64, 128)
NO_TRAIN = 31  # label id of class "train": left out of labels and predictions, so its IoU is undefined (NaN)


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    """2 cities x 2 images at 64x128: random label ids 0..33 (no 255, which the official evaluator rejects in
    labels; every ignored id is there), and random label-id predictions named as official results, some in city
    folders (``*_leftImg8bit.png``), some flat (``*_pred.png``)."""
    root, preds = tmp_path_factory.mktemp("cityscapes"), tmp_path_factory.mktemp("predictions")
    rng = np.random.default_rng(7)
    ids = np.setdiff1d(np.arange(34), [NO_TRAIN])
    for i, image in enumerate(write_tiny_cityscapes(root, "val", per_city=2, size=SIZE, seed=1)):
        stem, city = image.name[: -len("_leftImg8bit.png")], image.parent.name
        label = rng.choice(ids, SIZE).astype(np.uint8)
        Image.fromarray(label).save(root / "gtFine" / "val" / city / f"{stem}{LABEL_SUFFIX}")
        pred = rng.choice(ids, SIZE).astype(np.uint8)
        target = preds / city / image.name if i % 2 else preds / f"{stem}_pred.png"
        target.parent.mkdir(exist_ok=True)
        Image.fromarray(pred).save(target)
    return root, preds


def official_scores(root, preds, monkeypatch, capsys) -> dict:
    """cityscapesscripts' evalPixelLevelSemanticLabeling through its Python API (it reads the paths at import)."""
    monkeypatch.setenv("CITYSCAPES_DATASET", str(root))
    monkeypatch.setenv("CITYSCAPES_RESULTS", str(preds))
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)  # gone in NumPy 2.4; only its instance path calls it
    ev = importlib.reload(importlib.import_module("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling"))
    ev.args.evalInstLevelScore, ev.args.quiet, ev.args.JSONOutput = False, True, False
    ground_truth = sorted(str(p) for p in (root / "gtFine/val").glob(f"*/*{LABEL_SUFFIX}"))
    try:
        predictions = [ev.getPrediction(ev.args, gt) for gt in ground_truth]
        return ev.evaluateImgLists(predictions, ground_truth, ev.args)
    except SystemExit:
        pytest.fail(f"cityscapesscripts' evaluator exited: {capsys.readouterr().out.strip()}")


def test_label_ids_match_the_official_evaluator(cityscapes, tmp_path, monkeypatch, capsys):
    root, preds = cityscapes
    out = tmp_path / "out"
    code, stdout, stderr = adapt_main(capsys, "evaluate", "--predictions", str(preds), "--root", str(root), "--kind",
                                      "cityscapes", "--split", "val", "--id_type", "label", "--output", str(out))
    assert code == 0, stderr[-3000:]
    assert "mIoU" in stdout and "bicycle" in stdout and str(out / "metrics.json") in stdout
    ours = json.loads((out / "metrics.json").read_text())
    assert ours["num_images"] == 4 and ours["protocol"] == {"mode": "predictions", "id_type": "label"}
    assert (ours["kind"], ours["split"], ours["predictions"]) == ("cityscapes", "val", str(preds))

    official = official_scores(root, preds, monkeypatch, capsys)
    assert list(ours["per_class_iou"]) == list(CITYSCAPES_CLASSES.names)
    for name, iou in ours["per_class_iou"].items():
        reference = official["classScores"][name]
        if math.isnan(reference):
            assert iou is None, name
        else:
            assert abs(iou / 100 - reference) < 1e-6, (name, iou, reference)
    assert ours["per_class_iou"]["train"] is None  # absent from labels and predictions
    assert abs(ours["miou"] / 100 - official["averageScoreClasses"]) < 1e-6
    assert 0 < ours["miou"] < 20  # random predictions: low but not zero


def test_train_ids_score_like_label_ids(cityscapes, tmp_path):
    """The same predictions as train ids; pixels predicted as ignored label ids become 255 or any value >= 19:
    misses of the true class and false positives of none, as in the label-id run."""
    root, preds = cityscapes
    reference = score_predictions(preds, root, "cityscapes", "val", "label", tmp_path / "ref", verbose=False)
    lut, rng = CITYSCAPES_CLASSES.lookup_table(), np.random.default_rng(0)
    train_preds = tmp_path / "train_preds"
    train_preds.mkdir()
    for path in sorted(preds.rglob("*.png")):
        train = lut[np.asarray(Image.open(path))]
        void = train == 255
        train[void] = rng.choice([19, 20, 200, 255], int(void.sum()))
        stem = path.name.split("_leftImg8bit")[0].split("_pred")[0]
        Image.fromarray(train).save(train_preds / f"{stem}.png")
    metrics = score_predictions(train_preds, root, "cityscapes", None, "train", tmp_path / "out", verbose=False)
    assert metrics["per_class_iou"] == reference["per_class_iou"]
    assert (metrics["miou"], metrics["pixel_accuracy"]) == (reference["miou"], reference["pixel_accuracy"])
    assert metrics["protocol"]["id_type"] == "train" and metrics["split"] == "val"


def test_folder_dataset_and_cli_errors(cityscapes, tmp_path, capsys):
    """A folder dataset with its own ids (10, 20, 30; ignore 0) against a confusion matrix counted by hand; then
    the one-line errors: missing prediction, size mismatch, neither or both of --checkpoint / --predictions."""
    root, preds = tmp_path / "folder", tmp_path / "preds"
    for sub in ("images", "labels", "splits"):
        (root / sub).mkdir(parents=True)
    preds.mkdir()
    (root / "classes.yaml").write_text(yaml.safe_dump(
        {"ignore_index": 0, "classes": [{"id": 10, "name": "sky"}, {"id": 20, "name": "road"},
                                        {"id": 30, "name": "car"}]}))
    rng = np.random.default_rng(3)
    labels, predicted = [], []
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        label = rng.choice([0, 10, 20, 30, 99], (16, 24)).astype(np.uint8)  # 99: in no class -> ignored
        pred = rng.choice([10, 20, 30, 40], (16, 24)).astype(np.uint8)  # 40: in no class -> void (a miss)
        Image.fromarray(label).save(root / "labels" / f"{name}.png")
        Image.fromarray(pred).save(preds / f"{name}.png")
        labels.append(label)
        predicted.append(pred)
    (root / "splits" / "val.txt").write_text("a\nc\n")
    label, pred = np.concatenate([labels[0], labels[2]]), np.concatenate([predicted[0], predicted[2]])

    code, out, err = adapt_main(capsys, "evaluate", "--predictions", str(preds), "--root", str(root),
                                "--split", "val", "--output", str(tmp_path / "out"))
    assert code == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    valid = np.isin(label, [10, 20, 30])
    for name, cls in (("sky", 10), ("road", 20), ("car", 30)):
        tp = np.sum(valid & (label == cls) & (pred == cls))
        union = np.sum(valid & ((label == cls) | (pred == cls)))
        assert abs(metrics["per_class_iou"][name] - 100 * tp / union) < 1e-4, name
    assert abs(metrics["pixel_accuracy"] - 100 * np.sum(valid & (label == pred)) / valid.sum()) < 1e-4
    assert metrics["num_images"] == 2 and metrics["split"] == "val" and "car" in out

    (preds / "c.png").unlink()
    code, _, err = adapt_main(capsys, "evaluate", "--predictions", str(preds), "--root", str(root))
    assert code != 0 and str(preds / "c.png") in err and "prediction not found" in err
    assert len(err.strip().splitlines()) == 1
    Image.fromarray(predicted[2][:8]).save(preds / "c.png")
    code, _, err = adapt_main(capsys, "evaluate", "--predictions", str(preds), "--root", str(root))
    assert code != 0 and "c.png: prediction is 24x8 but label c.png is 24x16" in err

    code, _, err = adapt_main(capsys, "evaluate", "--root", str(root))
    assert code != 0 and "--checkpoint" in err and "--predictions" in err and "neither" in err
    code, _, err = adapt_main(capsys, "evaluate", "--checkpoint", "x.ckpt", "--predictions", str(preds),
                              "--root", str(root))
    assert code != 0 and "both" in err


def test_missing_cityscapes_prediction_through_the_cli(cityscapes, tmp_path, capsys):
    root, preds = cityscapes
    partial = tmp_path / "partial"
    shutil.copytree(preds, partial)
    dropped = next(partial.glob("*_pred.png"))
    dropped.unlink()
    code, _, stderr = adapt_main(capsys, "evaluate", "--predictions", str(partial), "--root", str(root), "--kind",
                                 "cityscapes")
    stem = dropped.name[: -len("_pred.png")]
    assert code == 2
    assert "prediction not found (1 of 4 samples have none)" in stderr and stem in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
