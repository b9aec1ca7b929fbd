"""The optimizer groups and the learning-rate schedule against DAFormer's (mmcv's) rules, recomputed here."""

from __future__ import annotations

import pytest
import torch

from adapt.errors import ConfigError
from adapt.optimization import lr_factor, lr_scheduler
from adapt.tasks import SegmentationTask

NAMES = ["road", "car", "sky"]


def mmcv_lr(base: float, it: int, max_iters: int, warmup_iters: int, power: float = 1.0,
            ratio: float = 1e-6) -> float:
    """mmcv's PolyLrUpdaterHook (min_lr 0) with ``warmup='linear'``, written from its documented formulas."""
    regular = base * (1 - it / max_iters) ** power
    if it >= warmup_iters:
        return regular
    k = (1 - it / warmup_iters) * (1 - ratio)
    return regular * (1 - k)


@pytest.mark.parametrize("step", [0, 1, 750, 1499, 1500, 20000, 39999])
def test_warmup_and_poly_match_daformers_schedule(step):
    assert lr_factor(step, 40000, 1500, "poly", 1.0) * 6e-5 == pytest.approx(mmcv_lr(6e-5, step, 40000, 1500),
                                                                          rel=1e-12)


def test_first_and_last_warmup_steps():
    assert lr_factor(0, 40000, 1500, "poly", 1.0) == pytest.approx(1e-6)
    assert lr_factor(1499, 40000, 1500, "poly", 1.0) == pytest.approx(
        (1 - 1499 / 40000) * (1 - (1 / 1500) * (1 - 1e-6)))
    assert lr_factor(10, 100, 0, "constant") == 1.0 and lr_factor(5, 100, 10, "constant") == pytest.approx(
        1 - 0.5 * (1 - 1e-6))


def test_scheduler_gives_each_step_its_factor():
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [weight], "lr": 6e-4}, {"params": [], "lr": 6e-5}], lr=6e-5)
    schedule = lr_scheduler(optimizer, 200, 50, "poly", 1.0)
    for step in range(60):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(6e-4 * mmcv_lr(1.0, step, 200, 50))
        optimizer.step()
        schedule.step()
    plain = lr_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 10, 0, "poly", 0.9)
    assert isinstance(plain, torch.optim.lr_scheduler.PolynomialLR)  # the state earlier checkpoints hold


def test_no_decay_on_the_encoders_norms_as_mmcvs_norm_key():
    task = SegmentationTask(arch="daformer", encoder_name="mit_b0", class_names=NAMES, lr=6e-5, head_lr_factor=10,
                            weight_decay=0.01, encoder_norm_decay=False, lr_schedule="constant")
    named = dict(task.named_parameters())
    groups = {(round(g["lr"], 12), g["weight_decay"]): {id(p) for p in g["params"]}
              for g in task.configure_optimizers().param_groups}
    head = {id(p) for n, p in named.items() if not n.startswith("segmenter.net.encoder.")}
    # mmcv: the longest matching key first, "head" (lr x 10) before "norm" (decay x 0); MiT names its LayerNorms
    # norm1, norm2, normN, patch_embedN.norm, attn.norm
    norms = {id(p) for n, p in named.items() if n.startswith("segmenter.net.encoder.") and "norm" in n}
    rest = {id(p) for n, p in named.items() if n.startswith("segmenter.net.encoder.")} - norms
    assert norms and groups == {(6e-4, 0.01): head, (6e-5, 0.01): rest, (6e-5, 0.0): norms}
    kept = SegmentationTask(arch="daformer", encoder_name="mit_b0", class_names=NAMES, weight_decay=0.01,
                            lr_schedule="constant")
    assert [g["weight_decay"] for g in kept.configure_optimizers().param_groups] == [0.01, 0.01]


def test_bad_poly_power_names_the_key():
    with pytest.raises(ConfigError, match="model.init_args.poly_power"):
        SegmentationTask(class_names=NAMES, poly_power=0)


def test_hrda_attention_head_learns_at_the_heads_rate():
    """mmcv's ``head`` key matches HRDA's ``decode_head.scale_attention``: the attention learns at lr x 10 too."""
    from adapt.tasks import SelfTrainingTask
    from adapt.tasks.ingredients import MultiResolution

    task = SelfTrainingTask(arch="daformer", encoder_name="mit_b0", class_names=NAMES, lr=6e-5, head_lr_factor=10,
                            lr_schedule="constant", encoder_norm_decay=False,
                            multi_resolution=MultiResolution(detail_crop=(64, 64)))
    head = next(g for g in task.configure_optimizers().param_groups if g["lr"] == pytest.approx(6e-4))
    attention = {id(p) for p in task.segmenter.multi_resolution.parameters()}
    assert attention and attention <= {id(p) for p in head["params"]}
    frozen = {id(p) for p in task.teacher.parameters()}
    assert not frozen & {id(p) for g in task.configure_optimizers().param_groups for p in g["params"]}
