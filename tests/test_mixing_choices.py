"""The mixing choices (adapt.tasks.mixes, adapt.nets.moments): CutMix boxes, mixup and its two-term loss, MoEx's
moment statistics against numpy, the choices through the real `adapt fit` of both tasks, the defaults unchanged,
bad values refused."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import adapt_main
from test_cli import tiny_recipe
from test_self_training import _self_training_recipe
from torch import nn

from adapt.data.labels import IGNORE_INDEX
from adapt.data.sampling import MIX, derive_seed, global_seed
from adapt.data.synthetic import CLASS_NAMES
from adapt.errors import ConfigError
from adapt.losses import global_batch_mean, pixel_cross_entropy
from adapt.nets.moments import early_stage, exchange_moments, moment_exchange
from adapt.nets.segmenter import build_segmenter
from adapt.tasks import SegmentationTask, SelfTrainingTask
from adapt.tasks.ingredients import MultiResolution
from adapt.tasks.mixes import (beta_draws, box_masks, cutmix_boxes, mix_into_target, mix_within, mixed_loss,
                               step_generator, two_label_cross_entropy)
from adapt.tasks.mixing import classmix_masks, mix, strong_transform

NAMES = list(CLASS_NAMES)


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(n: int = 3, size: tuple[int, int] = (24, 32), seed: int = 0):
    """Random images, labels with some ignored pixels and pseudo-label weights, two of each (a and b)."""
    g = _g(seed)
    x_a, x_b = torch.rand(n, 3, *size, generator=g), torch.rand(n, 3, *size, generator=g)
    y_a, y_b = (torch.randint(len(NAMES), (n, *size), generator=g) for _ in range(2))
    y_a[:, :2] = IGNORE_INDEX
    y_b[:, -3:] = IGNORE_INDEX
    w_b = torch.rand(n, generator=g)[:, None, None].expand(n, *size).clone()
    return x_a, y_a, x_b, y_b, w_b


def test_cutmix_box_area_is_one_minus_lambda_up_to_rounding_and_clipping():
    size = (40, 56)
    lam = torch.rand(400, generator=_g(1))
    boxes = cutmix_boxes(lam, size, _g(2))
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double() / (size[0] * size[1])
    side = (1 - lam.double()).sqrt()
    # rounding: int(H r) x int(W r) px loses less than (H + W) r px; clipping only removes pixels
    deficit_bound = (size[0] + size[1]) * side / (size[0] * size[1])
    inside = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < size[0]) & (boxes[:, 3] < size[1])
    assert inside.sum() > 20 and (~inside).sum() > 20
    assert torch.all(area <= 1 - lam.double() + 1e-9)
    assert torch.all((1 - lam.double() - area)[inside] <= deficit_bound[inside] + 1e-9)
    assert torch.all((boxes[:, :2] >= 0) & (boxes[:, 2:] <= torch.tensor(size)) & (boxes[:, 2:] >= boxes[:, :2]))
    masks = box_masks(boxes, size)
    assert torch.equal(masks.flatten(1).sum(1).double() / (size[0] * size[1]), area)
    for mask, (top, left, bottom, right) in zip(masks[:5], boxes[:5].tolist()):
        expected = torch.zeros(size, dtype=torch.bool)
        expected[top:bottom, left:right] = True
        assert torch.equal(mask, expected)


def test_cutmix_mean_kept_share_over_many_draws():
    """lam ~ Beta(alpha, alpha): E[lam] = 1/2, Var = 1 / (4 (2 alpha + 1)); before clipping a box's share is
    1 - lam, so the kept share averages E[lam]; after clipping (centre uniform on the image), each side r of a box
    keeps r - r^2 / 4 on average, so the kept share averages 1 - E[(r - r^2/4)^2] with r = sqrt(1 - lam)."""
    n, size = 20000, (1000, 1000)
    for alpha in (1.0, 0.3):
        lam = beta_draws(alpha, n, _g(3)).double()
        variance = 1 / (4 * (2 * alpha + 1))
        assert abs(lam.mean() - 0.5) < 4 * math.sqrt(variance / n)
        assert abs(lam.var() - variance) < 0.1 * variance
        unclipped = (1 - lam).sqrt()
        kept_unclipped = 1 - (size[0] * unclipped).floor() * (size[1] * unclipped).floor() / (size[0] * size[1])
        assert abs(kept_unclipped.mean() - 0.5) < 4 * math.sqrt(variance / n) + 2e-3  # (floor: < 2 px a side)
    lam = beta_draws(1.0, n, _g(4))
    boxes = cutmix_boxes(lam, size, _g(5))
    kept = 1 - ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double() / (size[0] * size[1])
    expected = 1 - (0.5 - 0.2 + 1 / 48)  # u = 1 - lam uniform: E[u - u^1.5 / 2 + u^2 / 16] = 1/2 - 1/5 + 1/48
    assert abs(kept.mean() - expected) < 4 * kept.std() / math.sqrt(n) + 2e-3, (kept.mean(), expected)
    assert kept.mean() > 0.5 + 0.1  # clipping keeps more than E[lam]


def test_cutmix_pastes_the_partners_pixels_labels_and_weights_in_the_box():
    x_a, y_a, x_b, y_b, w_b = _batch()
    # source-only: partner perm[i] of the same batch; draws: the permutation, lam, then the box centres
    mixed = mix_within("cutmix", x_a, y_a, _g(7), alpha=1.0)
    g = _g(7)
    perm = torch.randperm(3, generator=g)
    box = box_masks(cutmix_boxes(beta_draws(1.0, 3, g), x_a.shape[-2:], g), x_a.shape[-2:])
    assert box.any() and (~box).any()
    for i in range(3):
        inside = box[i]
        assert torch.equal(mixed.image[i][:, inside], x_a[perm[i]][:, inside])
        assert torch.equal(mixed.image[i][:, ~inside], x_a[i][:, ~inside])
        assert torch.equal(mixed.labels[i][inside], y_a[perm[i]][inside])
        assert torch.equal(mixed.labels[i][~inside], y_a[i][~inside])
    assert mixed.lam is None and mixed.weight is None  # one label per pixel: F's plain loss
    # self-training: the source box pasted onto the target image; source pixels weigh 1, target ones their weight
    mixed = mix_into_target("cutmix", x_a, y_a, x_b, y_b, w_b, _g(8), alpha=1.0)
    g = _g(8)
    box = box_masks(cutmix_boxes(beta_draws(1.0, 3, g), x_a.shape[-2:], g), x_a.shape[-2:])
    assert box.any() and (~box).any()
    assert torch.equal(mixed.image, torch.where(box[:, None], x_a, x_b))
    assert torch.equal(mixed.labels, torch.where(box, y_a, y_b))
    assert torch.equal(mixed.weight, torch.where(box, torch.ones_like(w_b), w_b))


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-pixel cross-entropy by hand: logits [N, C, H, W], labels [N, H, W] (ignored: 0)."""
    shifted = logits - logits.max(1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    safe = np.where(labels == IGNORE_INDEX, 0, labels)
    ce = -np.take_along_axis(log_p, safe[:, None], 1)[:, 0]
    return np.where(labels == IGNORE_INDEX, 0.0, ce)


def test_mixup_image_and_two_term_loss_by_hand():
    x_a, y_a, x_b, y_b, w_b = _batch()
    mixed = mix_within("mixup", x_a, y_a, _g(9), alpha=0.4)
    g = _g(9)
    perm = torch.randperm(3, generator=g)
    lam = beta_draws(0.4, 3, g)
    assert torch.allclose(mixed.image, lam.view(-1, 1, 1, 1) * x_a + (1 - lam.view(-1, 1, 1, 1)) * x_a[perm])
    assert torch.equal(mixed.lam, lam) and torch.equal(mixed.partner_labels, y_a[perm]) and mixed.partner is None
    logits = torch.randn(3, len(NAMES), 24, 32, generator=_g(10), dtype=torch.float64)
    ce_a, ce_b = _cross_entropy(logits.numpy(), y_a.numpy()), _cross_entropy(logits.numpy(), y_a[perm].numpy())
    lam_np = lam.double().numpy()[:, None, None]
    total = (lam_np * ce_a + (1 - lam_np) * ce_b).sum()
    count = (lam_np * (y_a.numpy() != IGNORE_INDEX) + (1 - lam_np) * (y_a[perm].numpy() != IGNORE_INDEX)).sum()
    got_total, got_count = two_label_cross_entropy(logits, mixed)
    assert math.isclose(float(got_total), total, rel_tol=1e-5) and math.isclose(float(got_count), count, rel_tol=1e-6)
    # self-training: source (weight 1) blended with target (pseudo-label weights); loss_average all counts every pixel
    mixed = mix_into_target("mixup", x_a, y_a, x_b, y_b, w_b, _g(11), alpha=1.0)
    lam = beta_draws(1.0, 3, _g(11))
    lam4 = lam.view(-1, 1, 1, 1)
    assert torch.allclose(mixed.image, lam4 * x_a + (1 - lam4) * x_b)
    ce_a, ce_b = _cross_entropy(logits.numpy(), y_a.numpy()), _cross_entropy(logits.numpy(), y_b.numpy())
    lam_np = lam.double().numpy()[:, None, None]
    total = (lam_np * ce_a + (1 - lam_np) * w_b.double().numpy() * ce_b).sum()
    got_total, got_count = two_label_cross_entropy(logits, mixed, every_pixel=True)
    assert math.isclose(float(got_total), total, rel_tol=1e-5)
    assert math.isclose(float(got_count), y_a.numel(), rel_tol=1e-6)  # every pixel of the batch, once
    # the loss F learns from: one pass, the global-batch mean of that sum
    net = nn.Conv2d(3, len(NAMES), 1).double()
    loss, value = mixed_loss(net, mixed._replace(image=mixed.image.double()), "stem", global_batch_mean, True)
    logits = net(mixed.image.double()).detach()
    ce_a, ce_b = _cross_entropy(logits.numpy(), y_a.numpy()), _cross_entropy(logits.numpy(), y_b.numpy())
    by_hand = (lam_np * ce_a + (1 - lam_np) * w_b.double().numpy() * ce_b).sum() / y_a.numel()
    assert math.isclose(float(value), by_hand, rel_tol=1e-5) and loss.requires_grad


def _partner_moments(before: np.ndarray, after: np.ndarray, partner: list[int], tol: float = 2e-5):
    """Check by hand, at every position of float [B, C, H, W] maps: after[i]'s mean over channels is
    before[partner[i]]'s, its std (ddof 1) std_i / sqrt(var_i + eps) * sqrt(var_j + eps), the partner's up to
    MoEx's eps 1e-5 (its unbiased variance). Returns (mean, var) of ``before`` [B, H, W]."""
    mean, var = before.mean(1), before.var(1, ddof=1)
    for i, j in enumerate(partner):
        np.testing.assert_allclose(after[i].mean(0), mean[j], atol=tol)
        expected = np.sqrt(var[i] / (var[i] + 1e-5) * (var[j] + 1e-5))
        np.testing.assert_allclose(after[i].std(0, ddof=1), expected, rtol=tol, atol=1e-6)
    return mean, var


def test_exchange_gives_each_position_the_partners_channel_mean_and_std():
    features = torch.randn(4, 16, 5, 6, generator=_g(12)) * 3 + torch.rand(4, 1, 5, 6, generator=_g(13))
    partner = [2, 0, 3, 1]
    out, f = exchange_moments(features, torch.tensor(partner)).numpy(), features.double().numpy()
    mean, var = _partner_moments(f, out, partner)
    for i, j in enumerate(partner):
        np.testing.assert_allclose(out[i].std(0, ddof=1), np.sqrt(var[j]), rtol=1e-4)  # the partner's std
        np.testing.assert_allclose((out[i] - mean[j]) / np.sqrt(var[j] + 1e-5),  # the content: image i's
                                   (f[i] - mean[i]) / np.sqrt(var[i] + 1e-5), atol=1e-4)


@pytest.mark.parametrize("encoder_name, layer, stride", [("resnet18", "stem", 4), ("resnet18", "C2", 4),
                                                         ("timm-tf_efficientnet_lite0", "stem", 2),
                                                         ("timm-tf_efficientnet_lite0", "C2", 4),
                                                         ("efficientnet-b0", "stem", 2)])
def test_moex_in_f_exchanges_the_early_stage_and_leaves_f_as_it_was(encoder_name, layer, stride):
    torch.manual_seed(0)
    segmenter = build_segmenter("fpn", encoder_name, None, num_classes=len(NAMES)).eval()
    encoder = segmenter.net.encoder
    x = torch.rand(3, 3, 64, 64, generator=_g(14))
    module = early_stage(encoder, layer)
    seen = []
    handle = module.register_forward_hook(lambda m, i, out: seen.append(out.detach().clone()))
    with torch.no_grad():
        plain = segmenter(x)
        partner = torch.tensor([1, 2, 0])
        with moment_exchange(encoder, partner, layer):
            handle.remove()  # (registered after the exchange: it sees the exchanged map)
            handle = module.register_forward_hook(lambda m, i, out: seen.append(out.detach().clone()))
            exchanged = segmenter(x)
        handle.remove()
        after = segmenter(x)
        with moment_exchange(encoder, torch.arange(3), layer):  # each image its own partner
            itself = segmenter(x)
    before, swapped = seen
    assert before.shape[-2:] == (64 // stride, 64 // stride)
    _partner_moments(before.double().numpy(), swapped.double().numpy(), partner.tolist(), tol=1e-4)
    assert not torch.allclose(exchanged, plain)
    assert torch.equal(after, plain)  # the hook is gone with the block
    torch.testing.assert_close(itself, plain, atol=1e-4, rtol=1e-4)


def test_moex_batches_carry_the_partners_labels_at_one_minus_lambda():
    x_a, y_a, x_b, y_b, w_b = _batch()
    mixed = mix_within("moex", x_a, y_a, _g(15), moex_lambda=0.9)
    perm = torch.randperm(3, generator=_g(15))
    assert torch.equal(mixed.image, x_a) and torch.equal(mixed.partner, perm)
    assert torch.equal(mixed.partner_labels, y_a[perm]) and torch.allclose(mixed.lam, torch.full((3,), 0.9))
    # self-training: source and target images in one batch, each pair exchanging its moments both ways
    mixed = mix_into_target("moex", x_a, y_a, x_b, y_b, w_b, _g(16), moex_lambda=0.9)
    assert torch.equal(mixed.image, torch.cat([x_a, x_b])) and mixed.partner.tolist() == [3, 4, 5, 0, 1, 2]
    assert torch.equal(mixed.labels, torch.cat([y_a, y_b])) and torch.equal(mixed.partner_labels, torch.cat([y_b, y_a]))
    assert torch.equal(mixed.weight, torch.cat([torch.ones_like(w_b), w_b]))
    assert torch.equal(mixed.partner_weight, torch.cat([w_b, torch.ones_like(w_b)]))
    # the loss: F with the exchange, 0.9 x the content's labels + 0.1 x the partner's (labelled pixels counted so)
    torch.manual_seed(0)
    segmenter = build_segmenter("fpn", "resnet18", None, num_classes=len(NAMES)).eval().double()
    image = torch.rand(3, 3, 32, 32, generator=_g(17), dtype=torch.float64)
    y = torch.randint(len(NAMES), (3, 32, 32), generator=_g(18))
    y[0, :4] = IGNORE_INDEX
    mixed = mix_within("moex", image, y, _g(19), moex_lambda=0.9)
    _, value = mixed_loss(segmenter, mixed, "stem", global_batch_mean)
    with torch.no_grad(), moment_exchange(segmenter.net.encoder, mixed.partner, "stem"):
        logits = segmenter(image).numpy()
    ce_a, ce_b = _cross_entropy(logits, y.numpy()), _cross_entropy(logits, mixed.partner_labels.numpy())
    labelled_a, labelled_b = y.numpy() != IGNORE_INDEX, mixed.partner_labels.numpy() != IGNORE_INDEX
    by_hand = (0.9 * ce_a.sum() + 0.1 * ce_b.sum()) / (0.9 * labelled_a.sum() + 0.1 * labelled_b.sum())
    assert math.isclose(float(value), by_hand, rel_tol=1e-6)


def _attached(task, step: int = 0):
    task._trainer = SimpleNamespace(global_step=step, world_size=1, global_rank=0)
    task.log_dict = lambda values, **kwargs: None
    task.log = lambda name, value, **kwargs: None
    return task


def test_the_defaults_compute_what_they_did():
    x_a, y_a, x_b, y_b, w_b = _batch(2, (32, 32))
    torch.manual_seed(0)
    task = _attached(SegmentationTask(arch="fpn", class_names=NAMES)).eval()  # eval: two passes alike
    assert task.hparams.mixing is None and task.source_mixing is None
    loss = task.training_step({"source": {"image": x_a, "mask": y_a}}, 0)
    assert torch.equal(loss, global_batch_mean(*pixel_cross_entropy(task.segmenter(x_a), y_a))[0])
    # SelfTrainingTask: ClassMix (and null) exactly as before, then DACS's augmentation; its source term unmixed
    task = SelfTrainingTask(arch="fpn", class_names=NAMES)
    assert task.hparams.mixing == "classmix" and task.source_mixing is None
    mixed = task._mixed(x_a, y_a, x_b, y_b, w_b, _g(20))
    g = _g(20)
    masks = classmix_masks(y_a, g)
    assert torch.equal(mixed.image, strong_transform(mix(masks, x_a, x_b), g, per_image=True))
    assert torch.equal(mixed.labels, mix(masks, y_a, y_b))
    assert torch.equal(mixed.weight, mix(masks, torch.ones_like(w_b), w_b)) and mixed.lam is None
    task = SelfTrainingTask(arch="fpn", class_names=NAMES, mixing=None, strong_augment=False)
    assert all(a is b for a, b in zip(task._mixed(x_a, y_a, x_b, y_b, w_b, _g(20))[:3], (x_b, y_b, w_b)))
    # source-only mixing draws from the generator SelfTrainingTask keys to (seed, process, step)
    assert step_generator(1, 5).initial_seed() == derive_seed(MIX, global_seed(), 1, 5)


@pytest.mark.parametrize("task, kwargs, message", [
    (SegmentationTask, {"mixing": "classmix"}, "model.init_args.mixing: 'classmix'; choose cutmix, mixup, moex"),
    (SelfTrainingTask, {"mixing": "moments"}, "model.init_args.mixing: 'moments'; choose classmix"),
    (SegmentationTask, {"mixing": "mixup", "mixing_alpha": 0.0}, "model.init_args.mixing_alpha: 0.0"),
    (SelfTrainingTask, {"mixing": "moex", "moex_lambda": 1.5}, "model.init_args.moex_lambda: 1.5"),
    (SegmentationTask, {"mixing": "moex", "moex_layer": "C3"}, "model.init_args.moex_layer: 'C3'"),
    (SegmentationTask, {"mixing": "moex", "arch": "segformer", "encoder_name": "mit_b0"},
     "model.init_args.mixing: moex needs an encoder with a known early stage"),
    (SegmentationTask, {"mixing": "moex", "compile": "aot_eager"}, "model.init_args.mixing: moex exchanges"),
    (SelfTrainingTask, {"mixing": "mixup", "multi_resolution": MultiResolution(detail_crop=(32, 32))},
     "model.init_args.mixing: 'mixup' blends two label sets"),
])
def test_bad_mixing_values_fail_in_one_line(task, kwargs, message):
    with pytest.raises(ConfigError) as error:
        task(**{"arch": "fpn", "class_names": NAMES, **kwargs})
    assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)


def test_bad_mixing_through_the_cli_fails_in_one_line(tmp_path, tiny_pair, capsys):
    code, _, err = adapt_main(capsys, "fit", "--config", str(tiny_recipe(tmp_path, tiny_pair)),
                              "--model.init_args.mixing=classmix", "--print_config")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "model.init_args.mixing" in err, err[-2000:]
    code, _, err = adapt_main(capsys, "fit", "--config", str(tiny_recipe(tmp_path, tiny_pair)),
                              "--model.init_args.mixing=moex", "--model.init_args.moex_lambda=2",
                              f"--trainer.default_root_dir={tmp_path / 'run'}")
    assert code == 2 and err.strip().splitlines()[-1] == (
        "adapt: error: model.init_args.moex_lambda: 2.0; give the content label's share in [0, 1] (MoEx: 0.9)"), err
    code, out, err = adapt_main(capsys, "fit", "--config", str(_self_training_recipe(tmp_path, tiny_pair)),
                                "--print_config")
    init_args = yaml.safe_load(out)["model"]["init_args"]
    assert code == 0 and init_args["mixing"] == "classmix" and init_args["mixing_alpha"] == 1.0


def _fit(capsys, recipe, run_dir) -> dict:
    code, _, err = adapt_main(capsys, "fit", "--config", str(recipe), f"--trainer.default_root_dir={run_dir}",
                              "--trainer.max_steps=2", "--trainer.limit_val_batches=1")
    assert code == 0, err[-3000:]
    ckpt = torch.load(next(run_dir.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    rows = list(csv.DictReader(next(run_dir.rglob("metrics.csv")).open()))
    metrics = {key: [float(row[key]) for row in rows if row.get(key)] for key in rows[0]}
    return {"hparams": ckpt["hyper_parameters"], "metrics": metrics}


@pytest.mark.parametrize("mixing", [pytest.param("cutmix", marks=pytest.mark.slow),
                                    pytest.param("mixup", marks=pytest.mark.slow), "moex"])
def test_source_only_fit_with_each_mixing(mixing, tmp_path, tiny_pair, capsys):
    recipe = tiny_recipe(tmp_path, tiny_pair)
    config = yaml.safe_load(recipe.read_text())
    config["model"]["init_args"].update(mixing=mixing)
    recipe.write_text(yaml.safe_dump(config))
    run = _fit(capsys, recipe, tmp_path / "run")
    assert (run["hparams"]["mixing"], run["hparams"]["mixing_alpha"], run["hparams"]["moex_lambda"],
            run["hparams"]["moex_layer"]) == (mixing, 1.0, 0.9, "stem")
    assert len(run["metrics"]["train/loss"]) == 2 and all(map(math.isfinite, run["metrics"]["train/loss"]))


@pytest.mark.parametrize("mixing", [pytest.param("cutmix", marks=pytest.mark.slow),
                                    pytest.param("mixup", marks=pytest.mark.slow), "moex"])
def test_self_training_fit_with_each_mixing(mixing, tmp_path, tiny_pair, capsys):
    run = _fit(capsys, _self_training_recipe(tmp_path, tiny_pair, mixing=mixing), tmp_path / "run")
    assert run["hparams"]["mixing"] == mixing and run["hparams"]["moex_layer"] == "stem"
    assert len(run["metrics"]["train/loss_mixed"]) == 2 and all(map(math.isfinite, run["metrics"]["train/loss_mixed"]))

