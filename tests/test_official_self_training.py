"""The self-training pieces against the official DAFormer / MIC code (lhoyer/MIC 2f932a98, kornia 0.5.8), each
result recomputed here from the official formula: DACS's colour jitter and blur, the EMA teacher, the pseudo-label
weight with margins, ClassMix, MIC's masked images and mmseg's cross-entropy mean."""

from __future__ import annotations

import colorsys
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as nnf

from adapt.data.sampling import MIX, derive_seed, global_seed
from adapt.data.synthetic import CLASS_NAMES
from adapt.losses import pixel_cross_entropy
from adapt.tasks import SelfTrainingTask
from adapt.tasks.ingredients import Masking, Teacher
from adapt.tasks.mixing import (blur_kernel_size, classmix_masks, color_jitter, every_pixel_counted, gaussian_blur,
                                strong_transform)

NAMES = list(CLASS_NAMES)


def _step_generator(step: int) -> torch.Generator:
    """The generator the task keys to (process 0, ``step``)."""
    return torch.Generator().manual_seed(derive_seed(MIX, global_seed(), 0, step))


def _attached(task: SelfTrainingTask, step: int = 0) -> SelfTrainingTask:
    """``task`` as a one-process run at optimizer step ``step`` sees it (logging recorded, not sent)."""
    task._trainer = SimpleNamespace(global_step=step, world_size=1, global_rank=0)
    task.logged = {}
    task.log_dict = lambda values, **kwargs: task.logged.update(values)
    task.log = lambda name, value, **kwargs: task.logged.__setitem__(name, value)
    return task


def test_jitter_on_80_percent_of_batches_and_blur_on_half_all_or_none_within_a_batch():
    x = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(0))  # blur kernel 3 x 3
    small = x[..., :4, :4]
    steps = 300
    jittered = blurred = 0
    for step in range(steps):
        for per_image in (True, False):  # DACS's mixed images, MIC's masked images
            changed = [not torch.equal(a, b) for a, b in
                       zip(strong_transform(small, _step_generator(step), per_image, blur=False), small)]
            assert len(set(changed)) == 1  # one draw for the whole batch: every image or none
        jittered += changed[0]
        changed = [not torch.equal(a, b) for a, b in zip(strong_transform(x, _step_generator(step), jitter_p=1.0), x)]
        assert len(set(changed)) == 1
        blurred += changed[0]
    for count, p in ((jittered, 0.8), (blurred, 0.5)):  # draw > 0.2: 80 %; draw > 0.5: 50 %
        assert abs(count - p * steps) < 4 * math.sqrt(steps * p * (1 - p)), (count, p)


def test_color_jitter_is_kornias_brightness_added_contrast_multiplied_hsv_saturation_and_hue():
    x = torch.rand(3, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    for seed in range(6):  # the draws color_jitter takes: 4 x B uniforms, then the order of the four
        generator = torch.Generator().manual_seed(seed)
        factors = 0.2 * (2 * torch.rand(4, 3, generator=generator) - 1)
        order = torch.randperm(4, generator=generator).tolist()
        out = color_jitter(x, torch.Generator().manual_seed(seed))
        for i in range(3):
            brightness, contrast, saturation, hue = factors[:, i].tolist()
            assert max(abs(brightness), abs(contrast), abs(saturation), abs(hue)) <= 0.2  # factors 1 +- 0.2, hue +- 0.2
            for r in range(4):
                for c in range(5):
                    rgb = x[i, :, r, c].tolist()
                    for op in order:
                        if op == 0:  # kornia: brightness_factor - 1 added, clipped
                            rgb = [min(max(v + brightness, 0), 1) for v in rgb]
                        elif op == 1:  # contrast: a plain multiply, clipped
                            rgb = [min(max(v * (1 + contrast), 0), 1) for v in rgb]
                        else:
                            h, s, v = colorsys.rgb_to_hsv(*rgb)
                            if op == 2:  # saturation: HSV's S multiplied, clipped
                                rgb = colorsys.hsv_to_rgb(h, min(max(s * (1 + saturation), 0), 1), v)
                            else:  # hue: hue_factor x 2 pi radians, i.e. hue_factor turns
                                rgb = colorsys.hsv_to_rgb((h + hue) % 1, s, v)
                    torch.testing.assert_close(out[i, :, r, c], torch.tensor(rgb, dtype=torch.float32),
                                               atol=2e-5, rtol=0)


def test_blur_kernel_size_sigma_range_and_reflected_gaussian():
    official = [int(np.floor(np.ceil(0.1 * s) - 0.5 + np.ceil(0.1 * s) % 2)) for s in (512, 1024, 64, 30, 8)]
    assert [blur_kernel_size(s) for s in (512, 1024, 64, 30, 8)] == official == [51, 103, 7, 3, 1]
    # gaussian_blur by hand: a 2-D Gaussian kernel (normalized), borders reflected without repeating the edge
    x = torch.rand(1, 2, 30, 64, generator=torch.Generator().manual_seed(2))
    sigma = 0.8
    ky, kx = blur_kernel_size(30), blur_kernel_size(64)  # 3 x 7
    kernel = np.outer(*(np.exp(-(np.arange(k) - k // 2) ** 2 / (2 * sigma ** 2)) for k in (ky, kx)))
    kernel /= kernel.sum()
    padded = np.pad(x[0].numpy(), ((0, 0), (ky // 2, ky // 2), (kx // 2, kx // 2)), mode="reflect")
    by_hand = np.zeros((2, 30, 64))
    for dy in range(ky):
        for dx in range(kx):
            by_hand += kernel[dy, dx] * padded[:, dy:dy + 30, dx:dx + 64]
    torch.testing.assert_close(gaussian_blur(x, sigma)[0], torch.tensor(by_hand, dtype=torch.float32), atol=1e-6,
                               rtol=0)
    # sigma uniform in [0.15, 1.15], one per image: read back from a blurred impulse, k(1) / k(0) = exp(-1 / 2s^2)
    impulse = torch.zeros(2, 3, 64, 64)
    impulse[:, :, 32, 32] = 1
    sigmas = []
    for step in range(300):
        out = strong_transform(impulse, _step_generator(step), jitter_p=1.0)  # blur only
        if not torch.equal(out, impulse):
            ratios = out[:, 0, 32, 33] / out[:, 0, 32, 32]
            sigmas += (1 / (-2 * ratios.double().log())).sqrt().tolist()
    assert abs(len(sigmas) / 2 - 150) < 4 * math.sqrt(300 * 0.25)  # blurred on half the steps
    assert 0.15 - 1e-3 <= min(sigmas) < 0.3 and 1.0 < max(sigmas) <= 1.15 + 1e-3


def test_ema_teacher_weight_and_buffers_after_steps_1_and_2():
    for mode in ("train", "eval"):
        torch.manual_seed(0)
        task = SelfTrainingTask(arch="fpn", class_names=NAMES, teacher=Teacher(mode=mode))
        names = {name for name, _ in task.segmenter.named_parameters()}
        teacher = {k: v.clone() for k, v in task.teacher.state_dict().items()}
        for step, alpha in ((1, 0.5), (2, 2 / 3)):  # DAFormer: min(1 - 1 / (i + 1), 0.999) at iteration i
            with torch.no_grad():
                for p in task.segmenter.parameters():
                    p.add_(0.01 * torch.randn_like(p))
                for m in task.segmenter.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.running_mean.add_(0.1), m.num_batches_tracked.add_(1)
            _attached(task, step).on_train_batch_end(None, None, 0)
            _attached(task, step).on_train_batch_end(None, None, 1)  # an accumulation batch: no second update
            student = task.segmenter.state_dict()
            for key, value in task.teacher.state_dict().items():
                if key in names or (mode == "eval" and value.is_floating_point()):
                    expected = alpha * teacher[key] + (1 - alpha) * student[key]
                elif mode == "eval":  # integer buffers: copied
                    expected = student[key]
                else:  # DAFormer: buffers are not averaged
                    expected = teacher[key]
                torch.testing.assert_close(value, expected, atol=1e-6, rtol=0, msg=f"{mode} {step} {key}")
                teacher[key] = value.clone()


def test_teacher_labels_with_batch_statistics_dropout_off_float32():
    torch.manual_seed(0)
    x_t = torch.rand(2, 3, 64, 64)
    for mode, norm in (("train", "train"), ("train", "frozen"), ("eval", "train")):
        task = SelfTrainingTask(arch="fpn", class_names=NAMES, teacher=Teacher(mode=mode), norm=norm).train()
        assert any(isinstance(m, nn.Dropout2d) for m in task.teacher.modules())  # FPN's decoder dropout
        before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
        seen = []
        task.teacher.register_forward_hook(lambda module, inputs, output: seen.append(output))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16-mixed: the teacher still computes in float32
            pseudo_t, _, _ = task._pseudo_labels(x_t, None)
            task._pseudo_labels(x_t, None)
        assert seen[0].dtype == torch.float32 and torch.equal(seen[0], seen[1])  # deterministic: no dropout
        assert not task.teacher.training  # back at rest in eval mode
        assert all(torch.equal(v, before[k]) for k, v in task.teacher.state_dict().items())  # records nothing
        by_hand = SelfTrainingTask(arch="fpn", class_names=NAMES)
        by_hand.segmenter.load_state_dict(task.teacher.state_dict())
        reference = by_hand.segmenter.eval() if mode == "eval" or norm == "frozen" else by_hand.segmenter.train()
        for m in reference.modules():
            if isinstance(m, nn.Dropout2d):
                m.eval()
        with torch.no_grad():
            expected = reference(x_t)
        torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(pseudo_t, expected.argmax(1))
        if mode == "train" and norm == "train":  # batch statistics: not what the running statistics give
            with torch.no_grad():
                assert not torch.allclose(seen[0], reference.eval()(x_t), atol=1e-3)


class _Fixed(nn.Module):
    """A teacher whose softmax is ``probs`` whatever the input."""

    def __init__(self, probs: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", probs.log())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


@pytest.mark.parametrize("weighting, confidence_weighting", [("batch", True), ("image", True), ("batch", False)])
def test_pseudo_weight_is_the_batch_share_then_the_margins(weighting, confidence_weighting):
    top = torch.full((2, 32, 32), 0.5)
    top[0, :8] = 0.968  # 256 sure pixels (>= 0.968) of image 1, all in its top margin
    top[1, 16:] = 0.99  # 512 of image 2
    probs = torch.stack([top, 1 - top], 1)
    valid = torch.ones(2, 32, 32, dtype=torch.uint8)
    valid[:, :8] = 0  # the data's pseudo_label_margins: top 8 rows, left 4 columns
    valid[:, :, :4] = 0
    task = SelfTrainingTask(arch="fpn", class_names=NAMES, masking=Masking(),
                            teacher=Teacher(weighting=weighting, confidence_weighting=confidence_weighting))
    task.teacher = _Fixed(probs)
    pseudo_t, weight_t, share = task._pseudo_labels(torch.rand(2, 3, 32, 32), valid)
    if not confidence_weighting:
        expected = torch.ones(2)
    elif weighting == "batch":  # DAFormer: sure pixels / all pixels of the batch, before the margins
        expected = torch.full((2,), (256 + 512) / 2048)
    else:
        expected = torch.tensor([256 / 1024, 512 / 1024])
    torch.testing.assert_close(share, expected)
    torch.testing.assert_close(weight_t, expected[:, None, None] * valid)
    # the mixed and the masked losses learn these weights: target pixels theirs (margins 0), source pixels 1
    task = _attached(task)
    calls = []
    loss = task._loss
    task._loss = lambda x, y, weight, generator, features=False: calls.append(weight) or loss(x, y, weight, generator,
                                                                                             features)
    y_s = torch.zeros(2, 32, 32, dtype=torch.long)
    y_s[:, :, 16:] = 1
    task.training_step({"source": {"image": torch.rand(2, 3, 32, 32), "mask": y_s},
                        "target": {"image": torch.rand(2, 3, 32, 32), "valid": valid}}, 0)
    source, mixed, masked = calls
    assert source is None and torch.equal(masked, weight_t)
    pasted = classmix_masks(y_s, torch.Generator().manual_seed(derive_seed(MIX, global_seed(), 0, 0)))
    assert torch.equal(mixed, torch.where(pasted, torch.ones_like(weight_t), weight_t))


def test_classmix_draws_from_the_whole_batchs_classes_ignore_included():
    y = torch.zeros(2, 6, 6, dtype=torch.long)
    y[0, :3], y[0, 3:] = 0, 1  # image 1: classes 0, 1
    y[1, :3], y[1, 3:5], y[1, 5] = 2, 3, 255  # image 2: classes 2, 3 and ignored pixels
    classes = y.unique()  # the batch's: 0, 1, 2, 3, 255 -> ceil(5 / 2) = 3 each
    empty = ignore_pasted = 0
    for seed in range(60):
        masks = classmix_masks(y, torch.Generator().manual_seed(seed))
        generator = torch.Generator().manual_seed(seed)  # DACS: per image, a choice among the batch's classes
        for i in range(2):
            chosen = classes[torch.randperm(len(classes), generator=generator)[:3]]
            assert len(set(chosen.tolist())) == 3 and set(chosen.tolist()) <= {0, 1, 2, 3, 255}
            assert torch.equal(masks[i], torch.isin(y[i], chosen))
        empty += not masks[0].any()  # image 1's classes both left out: nothing of it pasted
        ignore_pasted += bool(masks[1][5].all())
    assert empty > 0 and ignore_pasted > 0  # neither happens when each image draws among its own labelled classes


def test_masked_pixels_are_the_mean_colour_zero_after_normalization():
    torch.manual_seed(0)
    task = _attached(SelfTrainingTask(arch="fpn", class_names=NAMES, masking=Masking(ratio=0.7, block=0.25)))
    seen = []
    task._loss = lambda x, y, weight, generator, features=False: seen.append(x) or (torch.zeros(()),) * 2
    x_t = torch.rand(2, 3, 64, 64)
    task._masked_consistency(x_t, torch.zeros(2, 64, 64, dtype=torch.long), torch.ones(2, 64, 64),
                             torch.Generator().manual_seed(3))
    masked = seen[0]
    hidden = (masked == task.segmenter.mean).all(1)
    assert 0.3 < hidden.float().mean() < 0.95
    normalized = task.segmenter.normalize(masked)
    assert normalized.permute(1, 0, 2, 3)[:, hidden].abs().max() == 0
    visible = strong_transform(x_t, torch.Generator().manual_seed(3), per_image=False)  # MIC: augmented first
    assert torch.equal(masked.permute(1, 0, 2, 3)[:, ~hidden], visible.permute(1, 0, 2, 3)[:, ~hidden])


def test_cross_entropy_averages_over_all_pixels_of_the_batch():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    y = torch.randint(0, len(NAMES), (2, 64, 64))
    y[0, :16] = 255  # a quarter of image 1 ignored
    weight = torch.rand(2, 64, 64)
    for average in ("all", "labelled"):
        task = _attached(SelfTrainingTask(arch="fpn", class_names=NAMES, loss_average=average).eval())
        loss, value, _ = task._loss(x, y, weight, torch.Generator())
        with torch.no_grad():
            per_pixel = nnf.cross_entropy(task.segmenter(x), y, ignore_index=255, reduction="none") * weight
        count = y.numel() if average == "all" else (y != 255).sum()  # mmseg: ignored pixels in the count
        torch.testing.assert_close(value, per_pixel.sum() / count)
        torch.testing.assert_close(loss.detach(), value)
    # the HRDA terms go through the same labels and weights: the ignored pixels count, weigh nothing
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    labels = torch.randint(0, 4, (2, 8, 8))
    labels[1, 2:5] = 255
    total, count = pixel_cross_entropy(logits, *every_pixel_counted(labels, None))
    assert count == labels.numel()
    torch.testing.assert_close(total, pixel_cross_entropy(logits, labels)[0])
    total.backward()
    assert logits.grad[1, :, 2:5].abs().max() == 0
