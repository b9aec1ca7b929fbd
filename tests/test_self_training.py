"""Self-training: the EMA formula, ClassMix, pseudo-label weights, and the task through the real CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from conftest import adapt_main
from test_cli import tiny_recipe
from torch import nn

from adapt.tasks.mixing import classmix_masks, ema_alpha, ema_update, mix, pseudo_labels, strong_transform


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    net(torch.rand(2, 3, 8, 8))  # train-mode forward: running statistics and the batch counter move
    return net


def test_ema_update_equals_the_formula():
    teacher, student = _net(0), _net(1)
    student(torch.rand(2, 3, 8, 8))  # the student's batch counter is now 2, the teacher's 1
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)  # DAFormer: parameters only
    parameters = {name for name, _ in teacher.named_parameters()}
    for name, value in teacher.state_dict().items():
        if name in parameters:
            torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * student.state_dict()[name],
                                       rtol=0, atol=1e-7)
        else:  # running mean and variance, batch counter: the teacher's own
            assert torch.equal(value, before[name]), name
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9, buffers=True)  # teacher.mode: eval averages the statistics too
    for name, value in teacher.state_dict().items():
        if value.dtype.is_floating_point:  # weights, biases, running mean and variance
            torch.testing.assert_close(value, 0.9 * before[name] + 0.1 * student.state_dict()[name],
                                       rtol=0, atol=1e-7)
        else:  # num_batches_tracked
            assert torch.equal(value, student.state_dict()[name])
    ema_update(teacher, student, 0.0, buffers=True)  # no EMA: the teacher is the student
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), student.state_dict().values()))
    # DAFormer's min(1 - 1 / (i + 1), alpha) after i optimizer steps
    assert [ema_alpha(s, 0.999) for s in (1, 2, 9)] == [0.5, 1 - 1 / 3, 0.9] and ema_alpha(10**6, 0.999) == 0.999


def test_classmix_masks_and_mixed_labels_agree_pixel_for_pixel():
    g = torch.Generator().manual_seed(0)
    y_s = torch.randint(0, 5, (3, 12, 16), generator=g)
    y_s[0, :4] = 255  # some ignore pixels
    y_s[1] = 2  # one class only
    y_s[2] = 255  # nothing labelled
    x_s, x_t = torch.rand(3, 3, 12, 16, generator=g), torch.rand(3, 3, 12, 16, generator=g)
    pseudo = torch.randint(0, 5, (3, 12, 16), generator=g)
    masks = classmix_masks(y_s, torch.Generator().manual_seed(1))
    batch_classes = set(y_s.unique().tolist())  # 0..4 and 255: 6 classes, 3 chosen per image
    for i in range(3):
        chosen = set(y_s[i][masks[i]].unique().tolist())
        assert chosen <= batch_classes and len(chosen) <= math.ceil(len(batch_classes) / 2)
        assert torch.equal(masks[i], torch.isin(y_s[i], torch.tensor(sorted(chosen), dtype=torch.long)))
    x_m, y_m = mix(masks, x_s, x_t), mix(masks, y_s, pseudo)
    for b, r, c in [(b, r, c) for b in range(3) for r in range(12) for c in range(16)]:
        source = bool(masks[b, r, c])
        assert torch.equal(x_m[b, :, r, c], (x_s if source else x_t)[b, :, r, c])
        assert y_m[b, r, c] == (y_s if source else pseudo)[b, r, c]
    # the draw is the generator's: same seed, same classes
    assert torch.equal(masks, classmix_masks(y_s, torch.Generator().manual_seed(1)))


def test_pseudo_label_weights_match_the_definition():
    top = torch.tensor([[0.99, 0.60, 0.968, 0.50], [0.99, 0.99, 0.99, 0.60]])  # each image's top probabilities
    probs = torch.stack([top, 1 - top], 1).reshape(2, 2, 2, 2)
    probs[1] = probs[1].flip(0)  # image 2: the other class on top
    labels, weights = pseudo_labels(probs, threshold=0.968)
    assert labels[0].flatten()[:3].tolist() == [0, 0, 0] and labels[1].flatten().tolist() == [1, 1, 1, 1]
    # 0.99 and 0.968 (>=) of image 1, three 0.99 of image 2: 5 of 8 pixels, one share for the batch (DAFormer)
    assert weights.tolist() == [5 / 8, 5 / 8]
    assert pseudo_labels(probs, threshold=0.968, weighting="image")[1].tolist() == [0.5, 0.75]
    assert pseudo_labels(probs, threshold=0.98)[1].tolist() == [4 / 8, 4 / 8]


def test_strong_transform_is_drawn_from_its_generator():
    x = torch.rand(4, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    changed = 0
    for seed in range(8):
        a = strong_transform(x, torch.Generator().manual_seed(seed))
        assert torch.equal(a, strong_transform(x, torch.Generator().manual_seed(seed)))
        assert -1e-6 <= a.min() and a.max() <= 1 + 1e-6  # (blur and HSV round to a float32 ulp)
        changed += not torch.equal(a, x)
    assert changed > 0
    assert torch.equal(strong_transform(x, torch.Generator(), jitter_p=1.0, blur=False), x)  # never jittered


def _self_training_recipe(tmp_path, pair, **init_args):
    path = tiny_recipe(tmp_path, pair)
    recipe = yaml.safe_load(path.read_text())
    recipe["model"] = {"class_path": "adapt.tasks.SelfTrainingTask",
                       "init_args": {"arch": "fpn", "encoder_weights": None, "lr": 1e-3, **init_args}}
    recipe["data"]["init_args"].update(crop_size=[64, 64], augment="none")
    recipe["trainer"].update(max_steps=4, check_val_every_n_epoch=None, limit_val_batches=2)
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_self_training_fits_evaluates_and_keeps_the_teacher(tmp_path, tiny_pair, segmenter_ckpt, capsys):
    recipe = _self_training_recipe(tmp_path, tiny_pair, init_from=str(segmenter_ckpt), teacher={"ema_alpha": 0.99},
                                   warmup_steps=2, lambda_entropy=0.1)
    run_dir = tmp_path / "run"
    code, _, err = adapt_main(capsys, "fit", "--config", str(recipe), f"--trainer.default_root_dir={run_dir}")
    assert code == 0, err[-3000:]
    ckpt_path = next(run_dir.rglob("last.ckpt"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # ingredients recorded as plain dicts
    hparams = ckpt["hyper_parameters"]
    assert hparams["teacher"] == {"ema_alpha": 0.99, "pseudo_threshold": 0.968, "confidence_weighting": True,
                                  "mode": "train", "weighting": "batch"}
    assert (hparams["mixing"], hparams["masking"], hparams["multi_resolution"], hparams["norm"],
            hparams["loss_average"]) == ("classmix", None, None, "train", "all")
    student = {k[len("segmenter."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("segmenter.")}
    teacher = {k[len("teacher."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("teacher.")}
    assert student.keys() == teacher.keys()
    assert any(not torch.equal(student[k], teacher[k]) for k in student if student[k].is_floating_point())
    metrics = (next(run_dir.rglob("metrics.csv"))).read_text()
    for column in ("train/loss_source", "train/loss_mixed", "train/pseudo_weight", "train/entropy", "val/miou"):
        assert column in metrics
    out = tmp_path / "eval"
    code, _, err = adapt_main(capsys, "evaluate", "--checkpoint", str(ckpt_path), "--root", str(tiny_pair / "target"),
                              "--split", "val", "--output", str(out), "--plots", "false")
    assert code == 0, err[-2000:]
    from adapt.data import FolderDataset

    scores = json.loads((out / "metrics.json").read_text())
    assert isinstance(scores["miou"], float) and 0 <= scores["miou"] <= 100
    defined = [v for v in scores["per_class_iou"].values() if v is not None]
    assert defined and abs(scores["miou"] - sum(defined) / len(defined)) < 1e-4  # macro mean of the classes
    assert scores["num_images"] == len(FolderDataset(tiny_pair / "target", split="val"))
    assert scores["checkpoint"] == str(ckpt_path)


@pytest.mark.slow
def test_without_ema_the_teacher_is_the_student(tmp_path, tiny_pair, capsys):
    recipe = _self_training_recipe(tmp_path, tiny_pair, teacher={"ema_alpha": 0.0, "confidence_weighting": False},
                                   mixing=None, strong_augment=False)
    run_dir = tmp_path / "run"
    code, _, err = adapt_main(capsys, "fit", "--config", str(recipe), f"--trainer.default_root_dir={run_dir}")
    assert code == 0, err[-3000:]
    state = torch.load(next(run_dir.rglob("last.ckpt")), map_location="cpu", weights_only=False)["state_dict"]
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    for key, value in state.items():
        if key.startswith("segmenter.") and not key.endswith(statistics):
            assert torch.equal(value, state["teacher." + key[len("segmenter."):]]), key
    # DAFormer's EMA averages parameters only: the teacher keeps the statistics it was built with
    assert all(torch.equal(value, torch.zeros_like(value) if key.endswith("running_mean") else torch.ones_like(value))
               for key, value in state.items() if key.startswith("teacher.") and key.endswith(statistics[:2]))


def test_self_training_recipe_takes_the_segmentation_arguments(tmp_path, tiny_pair, capsys):
    code, out, err = adapt_main(capsys, "fit", "--config", str(_self_training_recipe(tmp_path, tiny_pair)),
                                "--print_config")
    assert code == 0, err[-2000:]
    init_args = yaml.safe_load(out)["model"]["init_args"]
    assert {"arch", "init_from", "warmup_steps", "teacher", "mixing", "feature_distance", "masking",
            "multi_resolution", "norm"} <= set(init_args)
    assert init_args["teacher"] == {"ema_alpha": 0.999, "pseudo_threshold": 0.968, "confidence_weighting": True,
                                    "mode": "train", "weighting": "batch"}
    assert init_args["masking"] is None and init_args["norm"] == "train"  # optional ingredients: off by default
    code, _, err = adapt_main(capsys, "fit", "--config", str(_self_training_recipe(tmp_path, tiny_pair)),
                              "--model.init_args.teacher.ema_alpha=1.5")
    assert code == 2 and err.strip().splitlines()[-1] == (
        "adapt: error: model.init_args.teacher.ema_alpha: 1.5; give a value in [0, 1)"), err[-2000:]


@pytest.mark.parametrize("section, old, value, new", [
    ("model", "ema_alpha", 0.99, "model.init_args.teacher.ema_alpha"),
    ("model", "mask_ratio", 0.7, "model.init_args.masking.ratio"),
    ("model", "keep_statistics", True, "norm: keep_statistics"),
    ("model", "hrda", True, "model.init_args.multi_resolution"),
    ("model", "ignore_index", 255, "removed"),
    ("data", "rare_class_temperature", 0.01, "data.init_args.rare_class_sampling.temperature")])
def test_an_old_recipe_key_names_its_new_spelling_in_one_line(tmp_path, tiny_pair, capsys, section, old, value, new):
    """Recipes written for the flat flags of earlier versions fail before anything runs, naming the key to use."""
    recipe = _self_training_recipe(tmp_path, tiny_pair)
    config = yaml.safe_load(recipe.read_text())
    config[section]["init_args"][old] = value
    recipe.write_text(yaml.safe_dump(config))
    code, _, err = adapt_main(capsys, "fit", "--config", str(recipe), f"--trainer.default_root_dir={tmp_path / 'run'}")
    line = err.strip().splitlines()[-1]
    assert code == 2 and len(err.strip().splitlines()) == 1 and old in line and new in line, err[-2000:]
    assert not (tmp_path / "run").exists()


def test_ingredients_check_their_values_and_record_plain_dicts():
    from adapt.errors import ConfigError
    from adapt.tasks.ingredients import FeatureDistance, Masking, MultiResolution, Teacher, ingredient, record

    for build, key in ((lambda: Teacher(pseudo_threshold=1.0), "teacher.pseudo_threshold: 1.0"),
                       (lambda: Teacher(mode="training"), "teacher.mode: 'training'"),
                       (lambda: Teacher(weighting="pixel"), "teacher.weighting: 'pixel'"),
                       (lambda: Masking(ratio=0.0), "masking.ratio: 0.0"),
                       (lambda: Masking(block=1.5), "masking.block: 1.5"),
                       (lambda: FeatureDistance(weight=0), "feature_distance.weight: 0"),
                       (lambda: MultiResolution(detail_loss_weight=-0.1), "multi_resolution.detail_loss_weight")):
        with pytest.raises(ConfigError, match="model.init_args." + key.replace(".", r"\.")):
            build()
    stored = record(MultiResolution(detail_crop=(64, 32)))
    assert stored == {"context_scale": 0.5, "detail_crop": [64, 32], "detail_loss_weight": 0.1}
    assert ingredient(MultiResolution, stored) == MultiResolution(0.5, [64, 32], 0.1) and record(None) is None
    assert FeatureDistance().class_indices(["road", "car", "person"]).tolist() == [1, 2]  # DAFormer's things

