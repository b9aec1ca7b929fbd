"""`adapt evaluate` reports: PNGs, calibration in metrics.json, worst classes, several roots compared."""

import json

import numpy as np
import pytest
from conftest import adapt_main
from PIL import Image

from adapt.data.labels import default_palette
from adapt.plots import plot_examples
from adapt.report import worst_classes, worst_classes_line

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPORTS = ("per_class_iou.png", "confusion_matrix.png", "reliability.png", "examples.png")


def check_png(path, min_side=200, max_side=6000):
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert min_side <= min(width, height) and max(width, height) <= max_side, (path, image.size)
        assert np.asarray(image.convert("L")).std() > 5, f"{path} is blank"
    return width, height


def test_evaluate_two_roots_writes_reports_and_compares(tiny_pair, segmenter_ckpt, tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, stderr = adapt_main(capsys, "evaluate", "--checkpoint", str(segmenter_ckpt), "--root",
                                      str(tiny_pair / "target"), "--root+", str(tiny_pair / "source"), "--split", "val",
                                      "--output", str(out), "--protocol", "slide", "--window", "[48, 48]", "--stride",
                                      "[32, 32]", "--examples", "4")
    assert code == 0, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["target", "source"]
    for name in ("target", "source"):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert summary[name] == metrics
        assert metrics["protocol"]["mode"] == "slide" and metrics["protocol"]["window"] == [48, 48]
        assert metrics["protocol"]["stride"] == [32, 32] and metrics["num_images"] == 6
        assert 0 <= metrics["ece"] <= 100
        bins = metrics["calibration"]
        assert len(bins["edges"]) == 16 and len(bins["count"]) == len(bins["accuracy"]) == 15
        # every labelled pixel (all the confusion matrix counts) lands in exactly one confidence bin
        assert sum(bins["count"]) == sum(map(sum, metrics["confusion_matrix"])) > 0
        filled = [i for i, n in enumerate(bins["count"]) if n]
        assert all(0 <= bins["accuracy"][i] <= 1 and bins["edges"][i] <= bins["confidence"][i] <= bins["edges"][i + 1]
                   for i in filled)
        ece = sum(bins["count"][i] * abs(bins["accuracy"][i] - bins["confidence"][i]) for i in filled)
        assert metrics["ece"] == pytest.approx(100 * ece / sum(bins["count"]), abs=1e-3)
        for png in REPORTS:
            check_png(out / name / png)
        assert not [p for p in (out / name).iterdir() if p.name.startswith(".")]  # no temporary files left
        assert worst_classes_line(metrics) in stdout
    assert stdout.count("worst classes: ") == 2
    table = stdout[stdout.index("== comparison"):].splitlines()
    assert table[1].split() == ["root", "mIoU", "pixel", "acc.", "ECE"]
    for line, name in zip(table[2:4], ("target", "source")):
        metrics = summary[name]
        assert line.split() == [name] + [f"{metrics[k]:.2f}" for k in ("miou", "pixel_accuracy", "ece")]


def test_evaluate_rejects_mismatched_per_root_options(tiny_pair, segmenter_ckpt, tmp_path, capsys):
    roots = f"[{tiny_pair / 'target'}, {tiny_pair / 'source'}]"
    code, _, err = adapt_main(capsys, "evaluate", "--checkpoint", str(segmenter_ckpt), "--root", roots, "--split",
                              "[val, val, train]", "--output", str(tmp_path))
    assert code == 2 and "--split: 3 values for 2 roots" in err
    code, _, err = adapt_main(capsys, "evaluate", "--checkpoint", str(segmenter_ckpt), "--root",
                              str(tiny_pair / "target"), "--protocol", "slide", "--output", str(tmp_path))
    assert code == 2 and "--window" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_examples_grid_has_a_translated_column_and_keeps_the_aspect(tmp_path):
    rng = np.random.default_rng(0)
    names = ["road", "sky", "car"]
    examples = []
    for _ in range(3):
        y_t = rng.integers(0, 3, (60, 160), dtype=np.uint8)
        y_t[:10] = 255
        examples.append({"x_t": rng.integers(0, 255, (60, 160, 3), dtype=np.uint8), "y_t": y_t,
                         "pred_t": rng.integers(0, 3, (60, 160), dtype=np.uint8),
                         "x_ts": rng.integers(0, 255, (60, 160, 3), dtype=np.uint8)})
    path = plot_examples(examples, default_palette(3), names, tmp_path / "examples.png", "translated")
    width, height = check_png(path)
    assert width > 2 * height  # 4 cells of 160 wide per row (x_t, T(x_t), prediction, truth), 3 rows of 60
    assert [p.name for p in tmp_path.iterdir()] == ["examples.png"]


def test_worst_classes_skip_undefined_ones():
    metrics = {"per_class_iou": {"a": 50.0, "b": None, "c": 10.0, "d": 30.0, "e": 90.0}}
    assert worst_classes(metrics) == [("c", 10.0), ("d", 30.0), ("a", 50.0)]
    assert worst_classes_line(metrics) == "worst classes: c 10.00, d 30.00, a 50.00"
