"""Adversarial alignment (AdvEnt's output level, CyCADA's feature level): the self-information map and the
discriminator's loss by hand, the published discriminators, which weights each step moves, the whole step recomputed,
and the task through the real CLI (fit, evaluate, resume)."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from conftest import adapt_main, tiny_datamodule
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from adapt.errors import ConfigError
from adapt.losses import (SOURCE_LABEL, TARGET_LABEL, discriminator_bce, domain_bce, entropy, pixel_cross_entropy,
                          self_information)
from adapt.nets.discriminator import FeatureDiscriminator, OutputDiscriminator
from adapt.tasks.adversarial import AdversarialTask

LEVELS = ["output", "feature"]
DROPOUT_OFF = {"segmenter_kwargs": {"decoder_dropout": 0.0}}  # F draws nothing: runs compare weight for weight
NO_DROPOUT = {**DROPOUT_OFF, "feature_dropout": 0.0}


def _trainer(tmp_path, max_steps: int, callbacks=()) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, callbacks=list(callbacks),
                      default_root_dir=tmp_path)


def _bce(scores: np.ndarray, label: float) -> np.ndarray:
    sigmoid = 1 / (1 + np.exp(-scores))
    return -(label * np.log(sigmoid) + (1 - label) * np.log(1 - sigmoid))


def test_self_information_equals_a_hand_computation():
    logits = np.random.default_rng(0).normal(0, 3, (2, 5, 3, 4))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = -p * np.log2(p) / np.log2(5)  # ADVENT's prob_2_entropy
    found = self_information(torch.tensor(logits, dtype=torch.float32))
    assert found.shape == (2, 5, 3, 4) and found.dtype == torch.float32
    assert np.allclose(found.numpy(), expected, atol=1e-6)
    assert self_information(torch.tensor(logits)).dtype == torch.float64  # float64 stays float64 (DDP tests)
    # summed over the classes: the entropy, normalized by log C; a confident pixel carries almost none
    assert torch.allclose(found.sum(1), entropy(torch.tensor(logits, dtype=torch.float32)) / math.log(5), atol=1e-6)
    assert self_information(torch.tensor([[[[50.0]], [[0.0]], [[0.0]]]])).max() < 1e-18
    uniform = self_information(torch.zeros(1, 4, 1, 1))  # p = 1/4: -1/4 log2(1/4) / log2(4) = 1/4 each
    assert torch.allclose(uniform, torch.full((1, 4, 1, 1), 0.25))


def test_discriminator_loss_equals_a_hand_computation():
    scores_s = np.array([[[[-2.0, 0.5], [1.0, -0.25]]]])  # D's raw scores on 1 source image, 2x2 cells
    scores_t = np.array([[[[3.0, -1.0], [0.0, 0.75]]], [[[-0.5, 2.0], [1.5, -3.0]]]])  # on 2 target images
    s, t = torch.tensor(scores_s, dtype=torch.float32), torch.tensor(scores_t, dtype=torch.float32)
    assert (SOURCE_LABEL, TARGET_LABEL) == (0.0, 1.0)  # ADVENT's labels
    # D: source cells towards 0, target cells towards 1, each domain's mean, halved (ADVENT's two halves)
    expected_d = (_bce(scores_s, 0).mean() + _bce(scores_t, 1).mean()) / 2
    assert float(discriminator_bce(s, t)) == pytest.approx(expected_d, rel=1e-6)
    # F's term: the target cells scored against the source label
    assert float(domain_bce(t, SOURCE_LABEL)) == pytest.approx(np.log1p(np.exp(scores_t)).mean(), rel=1e-6)
    assert float(domain_bce(t, SOURCE_LABEL)) == pytest.approx(_bce(scores_t, 0).mean(), rel=1e-6)


def test_the_published_discriminators():
    d = OutputDiscriminator(num_classes=11)  # AdvEnt's get_fc_discriminator
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(11, 64), (64, 128), (128, 256), (256, 512),
                                                                 (512, 1)]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    relus = [m for m in d.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(relus) == 4 and all(r.negative_slope == 0.2 for r in relus)
    assert len(list(d.modules())) == 1 + 1 + 5 + 4  # itself, its Sequential, the convs, the LeakyReLUs: no norm
    assert sum(p.numel() for p in d.parameters()) == sum(16 * i * o + o for i, o in
                                                         [(11, 64), (64, 128), (128, 256), (256, 512), (512, 1)])
    assert d(torch.rand(2, 11, 64, 96)).shape == (2, 1, 2, 3)  # stride 32

    f = FeatureDiscriminator(320)  # CyCADA's, on EfficientNet-Lite0's 320 channels
    convs = [m for m in f.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(320, 512, (1, 1)), (512, 256, (1, 1)),
                                                                               (256, 1, (1, 1))]
    assert [m.p for m in f.modules() if isinstance(m, nn.Dropout2d)] == [0.5, 0.5]
    assert len([m for m in f.modules() if isinstance(m, nn.ReLU)]) == 2
    assert f(torch.rand(2, 320, 4, 6)).shape == (2, 1, 4, 6)  # one score per cell


class StepSpy(pl.Callback):
    """Snapshots F's and D's weights around each optimizer step, and D's gradients when either steps."""

    def __init__(self):
        self.records, self.d_grads = [], []

    def on_train_start(self, trainer, task):
        def weights():
            return {"f": {k: v.detach().clone() for k, v in task.segmenter.named_parameters()},
                    "d": {k: v.detach().clone() for k, v in task.discriminator.named_parameters()}}

        for which, optimizer in zip(("f", "d"), trainer.optimizers):
            def step(*args, _original=optimizer.step, _which=which, **kwargs):
                self.d_grads.append([None if p.grad is None else p.grad.clone() for p in task.discriminator.parameters()])
                before = weights()
                result = _original(*args, **kwargs)
                self.records.append((_which, before, weights()))
                return result

            optimizer.step = step


@pytest.mark.parametrize("level", LEVELS)
def test_f_step_moves_only_f_and_d_step_only_d(tiny_pair, tmp_path, level):
    dm = tiny_datamodule(tiny_pair)
    task = AdversarialTask(arch="fpn", class_names=dm.class_names, level=level, lambda_adv=0.1)
    spy = StepSpy()
    trainer = _trainer(tmp_path, 4, [spy])
    trainer.fit(task, dm)
    assert [r[0] for r in spy.records] == ["f", "d", "f", "d"] and trainer.global_step == 4  # two per batch
    for which, before, after in spy.records:
        other = "d" if which == "f" else "f"
        assert all(torch.equal(before[other][k], after[other][k]) for k in before[other]), f"{which} moved {other}"
        assert any(not torch.equal(before[which][k], after[which][k]) for k in before[which]), f"{which} moved none"
    # F's backward adds nothing to D's gradients (toggled off): at F's steps they are none, then those D's last step
    # left; at D's steps they are D's own loss's (not zero)
    at_f, at_d = spy.d_grads[0::2], spy.d_grads[1::2]
    assert all(g is None for g in at_f[0]) and all(g is not None and g.any() for g in at_d[0])
    assert all(torch.equal(a, b) for a, b in zip(at_f[1], at_d[0]))


@pytest.mark.parametrize("level", LEVELS)
def test_the_adversarial_gradient_reaches_f(tiny_pair, level):
    dm = tiny_datamodule(tiny_pair)
    dm.setup("fit")
    x_t = torch.stack([dm.target[i]["image"] for i in range(2)])
    task = AdversarialTask(arch="fpn", class_names=dm.class_names, level=level)
    _, z_t = task._passes(x_t)
    domain_bce(task.discriminator(z_t), SOURCE_LABEL).backward()
    first_conv = task.segmenter.net.encoder.conv1.weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0  # through D into F's encoder
    classifier = task.segmenter.classifier.weight  # the output level reaches F's last layer too
    assert (classifier.grad is not None and classifier.grad.abs().sum() > 0) == (level == "output")


@pytest.mark.parametrize("level", LEVELS)
def test_logged_losses_equal_a_hand_computation(tiny_pair, tmp_path, level):
    """One batch: recompute F's cross-entropy, its adversarial term and D's loss from the batch and the weights the
    step started with (D's step reads F's inputs to D from before F's update, as ADVENT's)."""
    dm = tiny_datamodule(tiny_pair)
    task = AdversarialTask(arch="fpn", class_names=dm.class_names, level=level, lambda_adv=0.5, **NO_DROPOUT)
    seen = {}

    class Capture(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen["batch"], seen["nets"] = batch, copy.deepcopy((module.segmenter, module.discriminator))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen["logged"] = {k: float(v) for k, v in trainer.callback_metrics.items()}

    _trainer(tmp_path, 2, [Capture()]).fit(task, dm)
    f, d = seen["nets"]
    x_s, y_s, x_t = seen["batch"]["source"]["image"], seen["batch"]["source"]["mask"], seen["batch"]["target"]["image"]
    with torch.no_grad():
        (logits_s, deep_s), (logits_t, deep_t) = f.forward_features(x_s), f.forward_features(x_t)
        z_s, z_t = (self_information(logits_s), self_information(logits_t)) if level == "output" else (deep_s, deep_t)
        total, count = pixel_cross_entropy(logits_s, y_s)
        loss_s = float(total / count)
        scores_s, scores_t = d(z_s).numpy(), d(z_t).numpy()
    loss_adv = _bce(scores_t, 0).mean()
    logged = seen["logged"]
    assert logged["train/loss_source"] == pytest.approx(loss_s, rel=1e-5)
    assert logged["train/loss_adv"] == pytest.approx(loss_adv, rel=1e-5)
    assert logged["train/loss"] == pytest.approx(loss_s + 0.5 * loss_adv, rel=1e-5)
    assert logged["train/loss_d"] == pytest.approx((_bce(scores_s, 0).mean() + _bce(scores_t, 1).mean()) / 2, rel=1e-5)
    assert logged["train/d_accuracy"] == pytest.approx(((scores_s < 0).mean() + (scores_t > 0).mean()) / 2)


def test_lambda_zero_trains_f_as_plain_source_training(tiny_pair, tmp_path):
    """With lambda_adv 0, one batch moves F's weights exactly as SegmentationTask's step does (same seed, data,
    optimizer and schedule); only BatchNorm's running statistics also see the target pass."""
    from adapt.tasks import SegmentationTask

    finals = []
    for build, steps in ((lambda names: SegmentationTask(arch="fpn", class_names=names, **DROPOUT_OFF), 1),
                         (lambda names: AdversarialTask(arch="fpn", class_names=names, lambda_adv=0.0, **NO_DROPOUT), 2)):
        pl.seed_everything(0)
        dm = tiny_datamodule(tiny_pair)
        task = build(dm.class_names)
        start = {k: v.detach().clone() for k, v in task.segmenter.named_parameters()}
        _trainer(tmp_path, steps).fit(task, dm)
        finals.append((start, {k: v.detach().clone() for k, v in task.segmenter.named_parameters()}))
    (start_plain, plain), (start_adv, adversarial) = finals
    assert all(torch.equal(start_plain[k], start_adv[k]) for k in start_plain)  # the same F to begin with
    assert any(not torch.equal(start_plain[k], plain[k]) for k in plain)
    for name, value in plain.items():
        assert torch.allclose(value, adversarial[name], atol=1e-7), name


def test_both_learning_rates_follow_the_poly_decay_of_f(tiny_pair, tmp_path):
    """AdvEnt decays F's and D's learning rates by one poly law; max_steps counts two optimizer steps a batch, so
    max_steps 8 is a schedule of 4 iterations. F keeps its parameter groups (decoder and head at 10x here)."""
    dm = tiny_datamodule(tiny_pair)
    task = AdversarialTask(arch="fpn", class_names=dm.class_names, lr=1e-3, head_lr_factor=10, optimizer="sgd",
                           discriminator_lr=2e-4)
    lrs = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            lrs.append([group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups])

    _trainer(tmp_path, 8, [Watch()]).fit(task, dm)
    opt_f, opt_d = task.optimizers()
    assert {id(p) for g in opt_f.param_groups for p in g["params"]} == {id(p) for p in task.segmenter.parameters()}
    assert [id(p) for g in opt_d.param_groups for p in g["params"]] == [id(p) for p in task.discriminator.parameters()]
    assert type(opt_d.optimizer) is torch.optim.Adam and opt_d.param_groups[0]["betas"] == (0.9, 0.99)
    for i, found in enumerate(lrs, start=1):  # after iteration i: (1 - i / 4) ** 0.9 of each peak
        factor = (1 - i / 4) ** 0.9
        assert found == pytest.approx([1e-2 * factor, 1e-3 * factor, 2e-4 * factor], abs=1e-12), i


def _demo_args(recipe: str, tmp_path, run: str, *more: str) -> list[str]:
    """`adapt fit` of a shipped demo recipe, tiny: 24 images a domain at 64x64 (18 for training), 4 + 4 a batch,
    no dropout anywhere (so that a resumed run can be compared weight for weight)."""
    return ["fit", "--config", recipe, f"--data.init_args.root={tmp_path}/data", "--data.init_args.num_images=24",
            "--data.init_args.size=[64, 64]", "--data.init_args.batch_size=4", "--data.init_args.val_batch_size=6",
            "--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=1", "--trainer.log_every_n_steps=1",
            '--model.init_args.segmenter_kwargs={"decoder_dropout": 0.0}', "--model.init_args.feature_dropout=0",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path / run}", *more]


@pytest.mark.slow
@pytest.mark.parametrize("recipe, level", [("demo/advent", "output"), ("demo/feature_alignment", "feature")])
def test_demo_recipe_fits_evaluates_and_resumes(tmp_path, capsys, recipe, level):
    constant = "--model.init_args.lr_schedule=constant"  # a poly decay spans each run: 1 epoch is not half of 2
    code, _, err = adapt_main(capsys, *_demo_args(recipe, tmp_path, "one", constant))
    assert code == 0, err[-3000:]
    first = next((tmp_path / "one").rglob("last.ckpt"))
    ckpt = torch.load(first, map_location="cpu", weights_only=True)
    assert ckpt["kind"] == "segmenter" and ckpt["hyper_parameters"]["level"] == level
    assert ckpt["global_step"] == 8  # 4 batches of 4 + 4 images, an F step and a D step each
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 2
    assert any(k.startswith("discriminator.") for k in ckpt["state_dict"])
    metrics = next((tmp_path / "one").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/loss_source", "train/loss_adv", "train/loss_d", "train/d_accuracy",
            "val/miou"} <= set(metrics)

    out = tmp_path / "eval"  # adapt evaluate reads F alone
    code, _, err = adapt_main(capsys, "evaluate", "--checkpoint", str(first), "--root", str(tmp_path / "data/target"),
                              "--split", "val", "--output", str(out), "--plots", "false")
    assert code == 0, err[-2000:]
    scores = json.loads((out / "metrics.json").read_text())
    assert 0 <= scores["miou"] <= 100 and scores["num_images"] == 6

    # --ckpt_path resumes both optimizers, both schedules and the step count: 1 + 1 epochs equal 2 epochs
    code, _, err = adapt_main(capsys, *_demo_args(recipe, tmp_path, "resumed", constant, "--trainer.max_epochs=2",
                                                  f"--ckpt_path={first}"))
    assert code == 0, err[-3000:]
    code, _, err = adapt_main(capsys, *_demo_args(recipe, tmp_path, "two", constant, "--trainer.max_epochs=2"))
    assert code == 0, err[-3000:]
    resumed, straight = (torch.load(next((tmp_path / run).rglob("last.ckpt")), map_location="cpu", weights_only=True)
                         for run in ("resumed", "two"))
    assert resumed["global_step"] == straight["global_step"] == 16
    assert resumed["lr_schedulers"] == straight["lr_schedulers"]
    for key, value in straight["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][key].double(), value.double(), atol=1e-6), key


@pytest.mark.parametrize("key, value, words", [
    ("lambda_adv", "-0.1", "model.init_args.lambda_adv: -0.1; give a weight >= 0"),
    ("level", "pixel", "level"),
    ("discriminator_lr", "0", "model.init_args.discriminator_lr: 0.0; give a learning rate > 0")])
def test_bad_arguments_fail_in_one_line(tmp_path, capsys, key, value, words):
    code, _, err = adapt_main(capsys, *_demo_args("demo/advent", tmp_path, "run", f"--model.init_args.{key}={value}"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "run").exists()


def test_arguments_are_checked_in_python_too():
    names = ["road", "car"]
    for kwargs, words in (({"level": "pixel"}, "model.init_args.level: 'pixel'; choose output or feature"),
                          ({"lambda_adv": -1.0}, "model.init_args.lambda_adv: -1.0"),
                          ({"norm": "frozen"}, "model.init_args.norm: 'frozen'; choose train or keep_statistics"),
                          ({"discriminator_betas": (0.9, 1.0)}, "model.init_args.discriminator_betas"),
                          ({"feature_dropout": 1.0}, "model.init_args.feature_dropout"),
                          ({"level": "feature", "freeze_encoder": True}, "model.init_args.freeze_encoder")):
        with pytest.raises(ConfigError, match=words.replace("(", r"\(")) as caught:
            AdversarialTask(arch="fpn", class_names=names, **kwargs)
        assert "\n" not in str(caught.value)


def test_plain_ddp_is_refused_before_the_first_step():
    """F's and D's separate backward passes leave D's parameters unused in F's: DDP must look for them."""
    task = AdversarialTask(arch="fpn", class_names=["road", "car"])
    wrapper = DistributedDataParallel.__new__(DistributedDataParallel)  # what Lightning's ddp strategy wraps
    object.__setattr__(wrapper, "find_unused_parameters", False)
    task._trainer = SimpleNamespace(strategy=SimpleNamespace(model=wrapper))
    with pytest.raises(ConfigError, match="^trainer.strategy: .*use strategy: ddp_find_unused_parameters_true$"):
        task.on_fit_start()


def test_source_and_target_of_different_shapes_fail_in_one_line(tmp_path, tiny_pair, capsys):
    recipe = yaml.safe_load(open("recipes/demo/advent.yaml"))
    recipe["trainer"].update(max_steps=2, max_epochs=None, limit_val_batches=0, log_every_n_steps=1)
    recipe["data"] = {"class_path": "adapt.data.DomainDataModule",
                      "init_args": {"source_root": str(tiny_pair / "source"), "target_root": str(tiny_pair / "target"),
                                    "source_split": "train", "target_split": "train", "val_split": "val",
                                    "batch_size": 2, "target_resize": [32, 64]}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = adapt_main(capsys, "fit", "--config", str(path), f"--trainer.default_root_dir={tmp_path / 'run'}")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert lines[0] == ("adapt: error: adversarial alignment scores source and target batches of one shape; got "
                        "(2, 3, 64, 64) and (2, 3, 32, 64): set data.init_args.crop_size (or resize)")


class SaveEachRank(pl.Callback):
    """For tests/test_ddp.py: each process saves its task's weights (F and D) to ``out/rank_N.pt`` at the end."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, task) -> None:
        torch.save(task.state_dict(), f"{self.out}/rank_{trainer.global_rank}.pt")
