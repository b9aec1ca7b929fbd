"""Bad input through the real CLI: a one-line error naming the file or key, exit code 2, and nothing that looks
like a finished result."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from conftest import adapt_main
from test_cli import tiny_recipe


def broken_source(tmp_path, pair, problem):
    """A copy of the tiny pair whose source domain has ``problem``; returns (source root, the offending path)."""
    root = tmp_path / "pair"
    shutil.copytree(pair, root)
    source = root / "source"
    names = (source / "splits" / "train.txt").read_text().split()
    (source / "splits").rename(tmp_path / "unused_splits")  # every image is a training image
    image, label = next((source / "images").glob(f"{names[0]}.*")), source / "labels" / f"{names[0]}.png"
    if problem == "missing_root":
        shutil.rmtree(source)
        return source, source
    if problem == "empty_root":
        shutil.rmtree(source / "images")
        (source / "images").mkdir()
        return source, source / "images"
    if problem == "image_without_label":
        label.unlink()
        return source, label
    if problem == "label_without_image":
        image.unlink()
        return source, label
    if problem == "size_mismatch":
        cv2.imwrite(str(label), np.zeros((10, 10), np.uint8))
        return source, label
    if problem == "value_not_in_class_map":
        cv2.imwrite(str(label), np.full(cv2.imread(str(label)).shape[:2], 77, np.uint8))
        return source, label
    if problem == "class_file_not_yaml":
        (source / "classes.yaml").write_text("classes: [{id: 0, name: road\n")
        return source, source / "classes.yaml"
    if problem == "class_file_duplicate_ids":
        (source / "classes.yaml").write_text("classes: [{id: 0, name: road}, {id: 0, name: car}]\n")
        return source, source / "classes.yaml"
    raise ValueError(problem)


def assert_nothing_finished(run_dir):
    assert not list(run_dir.rglob("*.ckpt"))
    for record in run_dir.rglob("run.json"):
        assert json.loads(record.read_text())["status"] != "finished"


@pytest.mark.parametrize("problem, words", [
    ("missing_root", "not found"),
    ("empty_root", "no .png/.jpg images found"),
    ("image_without_label", "label not found"),
    ("label_without_image", "label without an image"),
    ("size_mismatch", "same size"),
    ("value_not_in_class_map", "label values [77] are neither class ids"),
    ("class_file_not_yaml", "not valid YAML"),
    ("class_file_duplicate_ids", "duplicate ids [0]"),
])
def test_bad_data_stops_the_fit_naming_the_file(tmp_path, tiny_pair, capsys, problem, words):
    source, culprit = broken_source(tmp_path, tiny_pair, problem)
    recipe = tiny_recipe(tmp_path, tiny_pair)
    run_dir = tmp_path / "run"
    code, _, err = adapt_main(capsys, "fit", "--config", str(recipe), f"--trainer.default_root_dir={run_dir}",
                              f"--data.init_args.source_root={source}", "--data.init_args.source_split=null")
    message = err.strip().splitlines()[-1]
    assert code == 2 and message.startswith("adapt: error: "), err[-2000:]
    assert str(culprit) in message and words in message, message
    assert "Traceback" not in err
    assert_nothing_finished(run_dir)


@pytest.mark.parametrize("override, words", [
    ("--model.init_args.wieght_decay=0.1", "model.init_args.wieght_decay"),
    ("--trainer.max_epochs=many", "max_epochs"),
    ("--data.init_args.bad_images=ignore", "data.init_args.bad_images: Expected a typing.Literal"),
])
def test_bad_recipe_keys_and_types_name_the_key(tmp_path, tiny_pair, capsys, override, words):
    run_dir = tmp_path / "run"
    code, _, err = adapt_main(capsys, "fit", "--config", str(tiny_recipe(tmp_path, tiny_pair)),
                              f"--trainer.default_root_dir={run_dir}", override)
    assert code == 2 and words in err and "Traceback" not in err, err[-2000:]
    assert_nothing_finished(run_dir)


class Payload:
    """Stands for pickled code: unpickling it means importing and running this module's code."""


def fake_translator(path, domains, ngf=8):
    """A TranslationTask-shaped checkpoint: hyperparameters, g_ts weights and the domains it was trained on."""
    from adapt.nets.translator import ResnetGenerator

    generator = ResnetGenerator(ngf, 1)
    state = {f"g_ts.{k}": v for k, v in generator.state_dict().items()}
    torch.save({"hyper_parameters": {"ngf": ngf, "n_blocks": 1}, "state_dict": state, "domains": domains}, path)
    return path


def test_bad_checkpoints_name_the_file(tmp_path, tiny_pair, segmenter_ckpt, capsys):
    target, out = str(tiny_pair / "target"), tmp_path / "eval"
    translator = fake_translator(tmp_path / "t.ckpt", {"source": "source", "target": "target"})

    def evaluate(*args):
        code, _, err = adapt_main(capsys, "evaluate", "--root", target, "--split", "val", "--output", str(out), *args)
        assert code == 2 and "Traceback" not in err, err[-2000:]
        assert not (out / "metrics.json").exists()
        return err.strip().splitlines()[-1]

    # a translator where F is expected, an F where a translator is expected
    assert f"{translator} is a translator" in evaluate("--checkpoint", str(translator))
    message = evaluate("--checkpoint", str(segmenter_ckpt), "--translator", str(segmenter_ckpt))
    assert f"{segmenter_ckpt} is an F (segmenter) checkpoint; give a translator checkpoint" in message
    # a translator trained towards another domain than the one evaluated
    message = evaluate("--checkpoint", str(segmenter_ckpt), "--translator", str(translator), "--root",
                       str(tiny_pair / "source"))
    assert str(translator) in message and "this target domain is 'source'" in message
    # truncated, and one that would run pickled code
    truncated = tmp_path / "half.ckpt"
    truncated.write_bytes(segmenter_ckpt.read_bytes()[:5000])
    assert f"{truncated} is not a readable checkpoint" in evaluate("--checkpoint", str(truncated))
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "payload": Payload()}, unsafe)
    assert "--weights_only false" in evaluate("--checkpoint", str(unsafe))
    # classes that do not match the data
    other = tmp_path / "other"
    shutil.copytree(tiny_pair / "target", other)
    (other / "classes.yaml").write_text("classes: [{id: 0, name: road}, {id: 1, name: car}]\n")
    assert "do not match" in evaluate("--checkpoint", str(segmenter_ckpt), "--root", str(other))


def test_translator_of_other_domains_refused_for_training(tmp_path, tiny_pair, capsys):
    translator = fake_translator(tmp_path / "t.ckpt", {"source": "gta5", "target": "cityscapes"})
    run_dir = tmp_path / "run"
    code, _, err = adapt_main(capsys, "fit", "--config", str(tiny_recipe(tmp_path, tiny_pair)),
                              f"--trainer.default_root_dir={run_dir}",
                              f"--model.init_args.translator_checkpoint={translator}")
    message = err.strip().splitlines()[-1]
    assert code == 2 and "from 'gta5' to 'cityscapes'" in message and "this source domain is 'source'" in message
    assert_nothing_finished(run_dir)


def test_resume_without_a_checkpoint_and_debug_shows_the_traceback(tmp_path, tiny_pair, capsys):
    from adapt.cli import main
    from adapt.errors import DataError

    recipe, run_dir = str(tiny_recipe(tmp_path, tiny_pair)), tmp_path / "run"
    code, _, err = adapt_main(capsys, "fit", "--config", recipe, f"--trainer.default_root_dir={run_dir}", "--resume")
    assert code == 2 and "--resume: no last.ckpt" in err and str(run_dir) in err
    with pytest.raises(DataError, match="class file not found"):
        main(["fit", "--config", recipe, f"--data.init_args.source_root={tmp_path / 'none'}", "--debug"])
