"""``adapt export``: the ONNX file computes F's logits (and F(g_ts(x))'s) as ``adapt evaluate`` does, at sizes other
than the traced one; its JSON says the classes and palette; bad input is one line and writes nothing."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import adapt_main

from adapt.checkpoints import load_checkpoint, load_segmenter, load_translator
from adapt.data.labels import default_palette
from adapt.inference import make_protocol, predict
from adapt.nets.translator import translate_padded
from adapt.tasks import TranslationTask

SIZES = [(2, 3, 64, 64), (1, 3, 45, 77)]  # batch 2 at the traced size; batch 1 at sides not multiples of 32
RECIPE = "model:\n  class_path: adapt.tasks.SegmentationTask\n"


@pytest.fixture(scope="module")
def translator_ckpt(tmp_path_factory) -> Path:
    """A tiny CycleGAN translator checkpoint (ngf 8, one residual block) whose g_ts visibly changes images (weights
    drawn wider than CycleGAN's init, which leaves the output near grey)."""
    torch.manual_seed(0)
    task = TranslationTask(ngf=8, n_blocks=1, ndf=8, pool_size=0)
    for parameter in task.g_ts.parameters():
        torch.nn.init.normal_(parameter, 0.0, 0.3)
    path = tmp_path_factory.mktemp("t") / "t.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def recorded_ckpt(segmenter_ckpt, tmp_path_factory) -> Path:
    """The session's F with a recipe recorded, as ``adapt fit``'s RunRecord writes it."""
    ckpt = load_checkpoint(segmenter_ckpt)
    ckpt["adapt"] = {"recipe": RECIPE}
    path = tmp_path_factory.mktemp("f_recipe") / "f.ckpt"
    torch.save(ckpt, path)
    return path


def session_of(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_f_matches_evaluate_at_other_sizes(segmenter_ckpt, tmp_path, capsys):
    output = tmp_path / "f.onnx"
    code, out, err = adapt_main(capsys, "export", "--checkpoint", str(segmenter_ckpt), "--output", str(output))
    assert code == 0, err
    assert f"wrote {output} (and {output.with_suffix('.json')})" in out
    loaded = load_segmenter(segmenter_ckpt)
    segmenter, hparams = loaded.segmenter, loaded.hyper_parameters
    session = session_of(output)
    for shape in SIZES:
        image = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            expected = predict(segmenter, image, make_protocol("full")).numpy()
        found = session.run(None, {"image": image.numpy()})[0]
        assert found.shape == (shape[0], len(hparams["class_names"]), *shape[2:])
        assert np.abs(found - expected).max() <= 1e-4
        assert expected.std() > 1e-3  # F is not constant: equal outputs mean something
    meta = json.loads(output.with_suffix(".json").read_text())
    assert meta["class_names"] == list(hparams["class_names"])
    assert meta["palette"] == default_palette(len(hparams["class_names"])).tolist()
    assert meta["ignore_index"] == 255 and meta["input"] == "float32 [B,3,H,W] RGB in [0,1]"
    assert meta["graph"] == "F(x)" and meta["opset"] == 18 and meta["checked"]["max_abs_difference"] <= 1e-4
    (source,) = meta["sources"]  # the fixture's checkpoint records no recipe: its hyper-parameters are hashed
    assert source["checkpoint"] == str(segmenter_ckpt) and source["hashed"] == "hyper_parameters"


def test_export_with_translator_is_f_of_g_ts(recorded_ckpt, translator_ckpt, tmp_path, capsys):
    output = tmp_path / "ft.onnx"
    code, _, err = adapt_main(capsys, "export", "--checkpoint", str(recorded_ckpt), "--output", str(output),
                              "--translator", str(translator_ckpt))
    assert code == 0, err
    segmenter = load_segmenter(recorded_ckpt).segmenter
    generator = load_translator(translator_ckpt, "target-to-source")
    session = session_of(output)
    for shape in SIZES:
        image = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():  # as SegmentationTask's test step: x_ts = translate_padded(g_ts, x_t), then F
            expected = predict(segmenter, translate_padded(generator, image)).numpy()
            without_t = predict(segmenter, image).numpy()
        found = session.run(None, {"image": image.numpy()})[0]
        assert np.abs(found - expected).max() <= 1e-4
        assert np.abs(found - without_t).max() > 1e-2  # T is in the graph
    meta = json.loads(output.with_suffix(".json").read_text())
    assert meta["graph"] == "F(g_ts(x))" and meta["min_side"] == 5
    f_source, t_source = meta["sources"]
    assert f_source["hashed"] == "recipe"
    assert f_source["recipe_sha256"] == hashlib.sha256(RECIPE.encode()).hexdigest()
    assert t_source["checkpoint"] == str(translator_ckpt) and t_source["hashed"] == "hyper_parameters"


def test_a_failed_check_writes_nothing(segmenter_ckpt, tmp_path, capsys, monkeypatch):
    from adapt.workflows import export

    monkeypatch.setattr(export, "CHECK_TOLERANCE", -1.0)  # no difference passes: the check must refuse
    output = tmp_path / "f.onnx"
    code, _, err = adapt_main(capsys, "export", "--checkpoint", str(segmenter_ckpt), "--output", str(output))
    assert code == 2 and "differ from PyTorch" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_one_line(segmenter_ckpt, tiny_pair, tmp_path, capsys, monkeypatch):
    def fails(*args: str) -> str:
        code, _, err = adapt_main(capsys, "export", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    missing = tmp_path / "nope.ckpt"
    assert f"{missing} not found" in fails("--checkpoint", str(missing), "--output", str(tmp_path / "a.onnx"))
    (tmp_path / "b.json").write_text("{}")  # an existing sidecar is a user's file too
    assert "exists" in fails("--checkpoint", str(segmenter_ckpt), "--output", str(tmp_path / "b.onnx"))
    assert "--opset 99" in fails("--checkpoint", str(segmenter_ckpt), "--output", str(tmp_path / "a.onnx"),
                                 "--opset", "99")
    fda = tmp_path / "fda.ckpt"
    code, _, err = adapt_main(capsys, "fda", "--source", str(tiny_pair / "source"), "--target",
                              str(tiny_pair / "target"), "--output", str(fda), "--count", "1", "--size", "[8,8]")
    assert code == 0, err
    err = fails("--checkpoint", str(segmenter_ckpt), "--output", str(tmp_path / "c.onnx"), "--translator", str(fda))
    assert "FDA translator" in err and "cannot be exported" in err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    err = fails("--checkpoint", str(segmenter_ckpt), "--output", str(tmp_path / "d.onnx"))
    assert "pip install adapt-seg[export]" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "fda.ckpt"]
