"""`adapt predict` through the real CLI: one label / colour / overlay PNG per image at the image's own size, equal
to the argmax of F's logits under the same protocol; an interrupted or failing run leaves no output folder and
never harms an existing one."""

from __future__ import annotations

import json
import os
import signal
import threading

import numpy as np
import pytest
import torch
from conftest import adapt_main
from PIL import Image

SIZES = {"square": (64, 64), "wide": (50, 70)}  # name -> (height, width)


@pytest.fixture()
def images(tiny_pair, tmp_path):
    """A folder of two unlabelled images of different sizes (target-domain pictures of the tiny pair, one
    resized), plus a subfolder that predict does not read."""
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    sources = sorted((tiny_pair / "target" / "images").iterdir())
    for source, (name, (height, width)) in zip(sources, SIZES.items()):
        Image.open(source).convert("RGB").resize((width, height), Image.BILINEAR).save(folder / f"{name}.png")
    Image.open(sources[2]).save(folder / "nested" / "ignored.png")
    return folder


def logits_of(ckpt, path, protocol) -> torch.Tensor:
    """F's logits for one image file, computed here: float [C, H, W]."""
    from adapt.checkpoints import load_segmenter
    from adapt.inference import predict

    segmenter = load_segmenter(ckpt).segmenter
    x = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).float().div(255)
    with torch.no_grad():
        return predict(segmenter, x[None], protocol, segmenter.output_stride)[0]


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def leftovers(tmp_path, name="out") -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f"{name}."))


@pytest.mark.parametrize("protocol", [["full"], ["resize", "--size=[32,48]"]], ids=["full", "resize"])
def test_predict_writes_each_image_at_its_own_size_as_the_models_argmax(segmenter_ckpt, images, tmp_path, capsys,
                                                                         protocol):
    from adapt.data.labels import default_palette
    from adapt.inference import make_protocol
    from adapt.plots import colorize

    out = tmp_path / "out"
    code, stdout, stderr = adapt_main(capsys, "predict", "--checkpoint", str(segmenter_ckpt), "--input", str(images),
                                      "--output", str(out), "--protocol", *protocol)
    assert code == 0, stderr[-2000:]
    assert f"wrote 2 predictions to {out}" in stdout and "adapt predict" in stderr  # the progress bar
    assert leftovers(tmp_path) == []
    manifest = json.loads((out / "predictions.json").read_text())
    checked = make_protocol(protocol[0], (32, 48) if protocol[0] == "resize" else None)
    assert manifest["protocol"] == checked and manifest["num_images"] == 2 and manifest["id_type"] == "train"
    assert manifest["checkpoint"] == str(segmenter_ckpt) and manifest["translator"] is None
    names = manifest["class_names"]
    assert len(names) == 10 and names[0] == "road"
    assert not (out / "confidence").exists()
    for folder in ("labels", "colors", "overlays"):
        assert sorted(p.name for p in (out / folder).iterdir()) == ["square.png", "wide.png"], folder
    for name, (height, width) in SIZES.items():
        label = read_png(out / "labels" / f"{name}.png")
        assert label.shape == (height, width) and label.dtype == np.uint8
        expected = logits_of(segmenter_ckpt, images / f"{name}.png", checked).argmax(0).numpy()
        np.testing.assert_array_equal(label, expected)
        colors = read_png(out / "colors" / f"{name}.png")
        np.testing.assert_array_equal(colors, colorize(label, default_palette(10)))
        overlay = read_png(out / "overlays" / f"{name}.png")
        assert overlay.shape == (height, width, 3)
        image = read_png(images / f"{name}.png").astype(float)
        np.testing.assert_allclose(overlay, 0.4 * image + 0.6 * colors, atol=1)


def test_confidence_maps_are_the_max_softmax_probability(segmenter_ckpt, images, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, stderr = adapt_main(capsys, "predict", "--checkpoint", str(segmenter_ckpt), "--input", str(images),
                                 "--output", str(out), "--confidence", "true", "--batch_size", "2")
    assert code == 0, stderr[-2000:]
    for name, (height, width) in SIZES.items():
        confidence = read_png(out / "confidence" / f"{name}.png")
        assert confidence.shape == (height, width) and confidence.dtype == np.uint8
        probs = logits_of(segmenter_ckpt, images / f"{name}.png", {"mode": "full"}).softmax(0).max(0).values
        assert np.abs(confidence.astype(int) - (probs.numpy() * 255).round()).max() <= 1
        assert confidence.min() >= 255 // 10  # at least 1/C: a real probability, not an empty map


def test_dataset_split_input(segmenter_ckpt, tiny_pair, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = adapt_main(capsys, "predict", "--checkpoint", str(segmenter_ckpt), "--root",
                                      str(tiny_pair / "target"), "--split", "val", "--output", str(out))
    assert code == 0, stderr[-2000:]
    val = (tiny_pair / "target" / "splits" / "val.txt").read_text().split()
    assert f"wrote {len(val)} predictions to {out}" in stdout
    assert sorted(p.stem for p in (out / "labels").iterdir()) == sorted(val)
    assert json.loads((out / "predictions.json").read_text())["split"] == "val"


def test_corrupt_image_leaves_no_output_and_names_the_file(segmenter_ckpt, images, tmp_path, capsys):
    (images / "z_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")  # read after the good ones
    out = tmp_path / "out"
    code, _, stderr = adapt_main(capsys, "predict", "--checkpoint", str(segmenter_ckpt), "--input", str(images),
                                 "--output", str(out))
    assert code == 2 and "z_corrupt.png" in stderr
    assert [line for line in stderr.splitlines() if line.startswith("adapt: error")] == [stderr.splitlines()[-1]]
    assert not out.exists() and leftovers(tmp_path) == []


def test_existing_output_is_refused_then_kept_when_a_replacement_fails(segmenter_ckpt, images, tmp_path, capsys,
                                                                        monkeypatch):
    from adapt.workflows import predict

    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("finished work\n")
    args = ["predict", "--checkpoint", str(segmenter_ckpt), "--input", str(images), "--output", str(out)]
    code, _, stderr = adapt_main(capsys, *args)
    assert code == 2 and "--overwrite true" in stderr and len(stderr.strip().splitlines()) == 1

    calls, write_png = [], predict._write_png

    def fail_on_the_fourth_png(path, pixels):  # the second image's label: the first image is done, the manifest is not
        calls.append(path)
        if len(calls) == 4:
            raise OSError("disk full")
        write_png(path, pixels)

    monkeypatch.setattr(predict, "_write_png", fail_on_the_fourth_png)
    with pytest.raises(OSError, match="disk full"):
        adapt_main(capsys, *args, "--overwrite", "true")
    assert len(calls) == 4 and calls[0].parent.parent.name.startswith("out.partial-")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"] and leftovers(tmp_path) == []

    monkeypatch.setattr(predict, "_write_png", write_png)
    code, _, stderr = adapt_main(capsys, *args, "--overwrite", "true")  # a finished run replaces it
    assert code == 0, stderr[-2000:]
    assert not (out / "mine.txt").exists() and (out / "predictions.json").is_file()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_mid_way_removes_the_partial_folder(segmenter_ckpt, images, tmp_path, capsys, monkeypatch, how):
    from adapt.workflows import predict

    if how == "sigterm" and threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are installed from the main thread only")
    calls, write_png = [], predict._write_png

    def interrupt(path, pixels):
        calls.append(path)
        if len(calls) == 2:
            if how == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)  # predict turns it into adapt.signals.Interrupted while it runs
        write_png(path, pixels)

    monkeypatch.setattr(predict, "_write_png", interrupt)
    previous = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    code, _, stderr = adapt_main(capsys, "predict", "--checkpoint", str(segmenter_ckpt), "--input", str(images),
                                 "--output", str(out))
    assert code == {"ctrl-c": 130, "sigterm": 143}[how] and "interrupted; nothing written" in stderr  # 128 + signal
    assert len(calls) == 2 and not out.exists() and leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is previous


def test_label_ids_only_for_cityscapes_models(segmenter_ckpt, images, tmp_path, capsys):
    from adapt.data.cityscapes import CITYSCAPES_CLASSES, label_id_palette
    from adapt.tasks import SegmentationTask

    out = tmp_path / "out"
    code, _, stderr = adapt_main(capsys, "predict", "--checkpoint", str(segmenter_ckpt), "--input", str(images),
                                 "--output", str(out), "--id_type", "label")
    assert code == 2 and "--id_type label" in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists() and leftovers(tmp_path) == []

    torch.manual_seed(0)  # an untrained F of the 19 Cityscapes classes: label ids and the official colours
    task = SegmentationTask(arch="fpn", class_names=list(CITYSCAPES_CLASSES.names))
    ckpt = tmp_path / "cityscapes.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, ckpt)
    code, _, stderr = adapt_main(capsys, "predict", "--checkpoint", str(ckpt), "--input", str(images),
                                 "--output", str(out), "--id_type", "label")
    assert code == 0, stderr[-2000:]
    train = logits_of(ckpt, images / "wide.png", {"mode": "full"}).argmax(0).numpy()
    ids = np.array(CITYSCAPES_CLASSES.ids)
    np.testing.assert_array_equal(read_png(out / "labels" / "wide.png"), ids[train])
    np.testing.assert_array_equal(read_png(out / "colors" / "wide.png"), label_id_palette()[ids[train]])
    assert set(np.unique(ids[train])) <= set(range(7, 34))  # label ids (road = 7 ... bicycle = 33)


@pytest.mark.parametrize("extra, words", [([], "neither was given"), (["--root", "x"], "not both"),
                                          (["--split", "val"], "--split and --kind go with --root"),
                                          (["--protocol", "resize"], "--size")])
def test_bad_inputs_are_one_line_errors(segmenter_ckpt, images, tmp_path, capsys, extra, words):
    args = [] if words == "neither was given" else ["--input", str(images)]
    code, _, stderr = adapt_main(capsys, "predict", "--checkpoint", str(segmenter_ckpt), "--output",
                                 str(tmp_path / "out"), *args, *extra)
    assert code == 2 and words in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_help_is_the_verbs_not_lightnings(capsys):
    code, out, _ = adapt_main(capsys, "predict", "--help")
    assert code == 0 and "--input" in out and "--confidence" in out and "--overwrite" in out
    assert "--ckpt_path" not in out and "--trainer" not in out
