"""Evaluation protocols (full / resize / slide) and calibration (ECE), against hand computations."""

import pytest
import torch
from torch import nn

from adapt.inference import make_protocol, predict, predict_padded, predict_resize, predict_slide, window_starts
from adapt.metrics import Calibration, calibration_bins, expected_calibration_error
from adapt.nets.segmenter import build_segmenter


class Constant(nn.Module):
    """Logits 1 everywhere: any sum over overlapping windows not divided by the count shows."""

    def forward(self, x):
        return torch.ones(x.shape[0], 2, *x.shape[-2:])


class ColumnInWindow(nn.Module):
    """Logit = the column index inside the input it is given (so inside the window, padding included)."""

    def forward(self, x):
        columns = torch.arange(x.shape[-1], dtype=torch.float32)
        return columns.expand(x.shape[0], 1, *x.shape[-2:]).clone()


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return build_segmenter("fpn", "resnet18", None, num_classes=4).eval()


def test_slide_with_one_window_over_the_image_equals_full(segmenter):
    x = torch.rand(2, 3, 45, 70)
    with torch.no_grad():
        full = predict(segmenter, x, make_protocol("full"))
        whole = predict(segmenter, x, make_protocol("slide", window=(45, 70), stride=(45, 70)))
        larger = predict(segmenter, x, make_protocol("slide", window=(512, 1024)))  # shrinks to the image
    assert full.shape == (2, 4, 45, 70)
    torch.testing.assert_close(whole, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(larger, full, rtol=0, atol=1e-6)


def test_resize_to_the_image_size_equals_full_and_other_sizes_come_back_full_size(segmenter):
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        full = predict_padded(segmenter, x)
        same = predict(segmenter, x, make_protocol("resize", size=(40, 56)))
        smaller = predict(segmenter, x, make_protocol("resize", size=(32, 48)))
    torch.testing.assert_close(same, full, rtol=0, atol=1e-6)
    assert smaller.shape == full.shape


def test_resize_brings_logits_back_bilinearly():
    # a constant map stays constant through both resizes; the input really is resized (the net sees size)
    seen = []

    class Spy(Constant):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return super().forward(x)

    logits = predict_resize(Spy(), torch.rand(1, 3, 50, 70), (64, 96))
    assert seen == [(64, 96)] and logits.shape == (1, 2, 50, 70)
    torch.testing.assert_close(logits, torch.ones_like(logits))


def test_window_starts_cover_the_image_and_end_at_the_border():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 4, 4) == [0, 4, 6]
    assert window_starts(8, 4, 4) == [0, 4]
    assert window_starts(3, 4, 2) == [0]


def test_overlapping_windows_are_averaged_by_count():
    x = torch.rand(1, 3, 5, 6)
    constant = predict_slide(Constant(), x, window=(3, 4), stride=(1, 2))
    torch.testing.assert_close(constant, torch.ones(1, 2, 5, 6))  # a plain sum would read 2 or 3 on overlaps
    # width 6, window 4, stride 2: windows at columns 0 and 2; each gives the column inside the window
    columns = predict_slide(ColumnInWindow(), x, window=(5, 4), stride=(5, 2))
    expected = torch.tensor([0, 1, (2 + 0) / 2, (3 + 1) / 2, 2, 3]).expand(1, 1, 5, 6)
    torch.testing.assert_close(columns, expected)


def test_slide_averages_real_logits_by_hand(segmenter):
    x = torch.rand(1, 3, 40, 64)
    with torch.no_grad():
        slid = predict_slide(segmenter, x, window=(40, 48), stride=(40, 16))  # windows at columns 0 and 16
        left, right = predict_padded(segmenter, x[..., :48]), predict_padded(segmenter, x[..., 16:])
    expected = torch.zeros(1, 4, 40, 64)
    expected[..., :48] += left
    expected[..., 16:] += right
    expected[..., 16:48] /= 2
    torch.testing.assert_close(slid, expected, rtol=0, atol=1e-6)


def test_protocol_settings_are_checked_and_described():
    assert make_protocol()["mode"] == "full"
    slide = make_protocol("slide", window=(512, 1024))
    assert slide["stride"] == [256, 512] and "description" in slide
    assert make_protocol("resize", size=(512, 1024))["size"] == [512, 1024]
    for kwargs, message in [(dict(mode="slide"), "--window"), (dict(mode="resize"), "--size"),
                            (dict(mode="resize", size=(8, 8), window=(4, 4)), "--window does not apply"),
                            (dict(mode="slide", window=(4, 4), stride=(8, 2)), "larger than"),
                            (dict(mode="full", size=(8, 8)), "--size does not apply"),
                            (dict(mode="tiles"), "choose one of")]:
        with pytest.raises(ValueError, match=message):
            make_protocol(**kwargs)


def test_task_forward_follows_its_protocol(segmenter):
    from adapt.tasks import SegmentationTask

    task = SegmentationTask(arch="fpn", class_names=["a", "b", "c"]).eval()
    x = torch.rand(1, 3, 40, 64)
    assert task.eval_protocol["mode"] == "full"
    task.set_eval_protocol(make_protocol("slide", window=(32, 32), stride=(16, 16)))
    with torch.no_grad():
        torch.testing.assert_close(task(x), predict_slide(task.segmenter, x, (32, 32), (16, 16)))


# -- calibration -----------------------------------------------------------------------------------------------

PROBS = torch.tensor([[0.91, 0.05, 0.04], [0.04, 0.92, 0.04], [0.50, 0.30, 0.20],
                      [0.20, 0.18, 0.62], [0.10, 0.10, 0.80], [0.34, 0.36, 0.30]]).T.reshape(1, 3, 2, 3)
LABELS = torch.tensor([0, 0, 0, 1, 255, 1]).reshape(1, 2, 3)
# confidence / correct (15 bins, right-closed): 0.91 yes and 0.92 no share bin 13 (13/15 < c <= 14/15);
# 0.50 yes -> bin 7; 0.62 no -> bin 9; 0.80 is an ignore pixel; 0.36 yes -> bin 5. N = 5.
# ECE = sum_b n_b / N |acc_b - conf_b| = (2 |0.5 - 0.915| + |1 - 0.5| + |0 - 0.62| + |1 - 0.36|) / 5 = 0.518
HAND_ECE = (2 * abs(0.5 - 0.915) + 0.5 + 0.62 + 0.64) / 5


def test_ece_equals_a_hand_computation():
    confidence, pred = PROBS.max(1)
    metric = Calibration(num_bins=15)
    metric.update(confidence, pred, LABELS)
    result = metric.compute()
    assert result["ece"] == pytest.approx(100 * HAND_ECE)
    bins = result["calibration"]
    assert len(bins["edges"]) == 16 and bins["edges"][0] == 0 and bins["edges"][-1] == 1
    assert bins["count"] == [0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 2, 0]
    assert bins["confidence"][13] == pytest.approx(0.915) and bins["accuracy"][13] == pytest.approx(0.5)
    assert bins["accuracy"][5] == 1.0 and bins["accuracy"][9] == 0.0 and bins["confidence"][0] is None


def test_calibration_accumulates_over_batches_and_processes_by_summation():
    confidence, pred = PROBS.max(1)
    first, second = Calibration(), Calibration()
    first.update(confidence[..., :1, :], pred[..., :1, :], LABELS[..., :1, :])
    second.update(confidence[..., 1:, :], pred[..., 1:, :], LABELS[..., 1:, :])
    first.merge_state(second)  # what the DDP sync does with dist_reduce_fx="sum"
    assert first.compute()["ece"] == pytest.approx(100 * HAND_ECE)
    count, conf_sum, acc_sum = calibration_bins(torch.tensor([0.0, 1.0, 0.5]), torch.tensor([True, True, False]), 2)
    assert count.tolist() == [2, 1] and acc_sum.tolist() == [1.0, 1.0]  # 0 -> first bin, 0.5 right-closed
    assert expected_calibration_error(count, conf_sum, acc_sum) == pytest.approx((abs(1 - 0.5) + 0) / 3)
    with pytest.warns(UserWarning):  # torchmetrics: compute before update
        assert Calibration().compute()["ece"] is None
