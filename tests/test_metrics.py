import math

import pytest
import torch

from adapt.metrics import ConfusionMatrix, confusion_matrix, iou_per_class, mean_iou, pixel_accuracy, summarize


def test_confusion_matrix_by_hand_with_ignore_and_absent_class():
    # 4 classes; class 3 appears in neither labels nor predictions; 255 pixels are ignored.
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 2]])
    cm = confusion_matrix(pred, target, num_classes=4)
    expected = torch.tensor([[1, 1, 0, 0],   # label 0: one right, one predicted as 1
                             [0, 2, 0, 0],   # label 1: both right
                             [1, 0, 1, 0],   # label 2: one right, one predicted as 0
                             [0, 0, 0, 0]])
    assert torch.equal(cm, expected)
    iou = iou_per_class(cm)
    # IoU = TP / (TP + FP + FN): class 0: 1/(1+1+1), class 1: 2/(2+1+0), class 2: 1/(1+0+1), class 3: undefined
    assert iou[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert pixel_accuracy(cm) == pytest.approx(4 / 6)
    summary = summarize(cm, ["a", "b", "c", "d"])
    assert summary["per_class_iou"]["d"] is None
    assert summary["miou"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_class_only_in_predictions_counts_as_zero():
    target = torch.tensor([0, 0, 0, 0])
    pred = torch.tensor([0, 0, 1, 1])
    cm = confusion_matrix(pred, target, num_classes=2)
    assert iou_per_class(cm).tolist() == [0.5, 0.0]
    assert mean_iou(cm) == pytest.approx(0.25)


def test_accumulated_matrix_is_not_a_mean_of_batch_ious():
    metric = ConfusionMatrix(num_classes=2)
    batches = [(torch.tensor([[0, 0, 0, 1]]), torch.tensor([[0, 0, 0, 0]])),
               (torch.tensor([[1, 1, 1, 1]]), torch.tensor([[1, 1, 1, 0]]))]
    for pred, target in batches:
        metric.update(pred, target)
    cm = metric.compute()
    assert torch.equal(cm, torch.tensor([[3, 2], [0, 3]]))
    assert mean_iou(cm) == pytest.approx((3 / 5 + 3 / 5) / 2)
    per_batch = [mean_iou(confusion_matrix(p, t, 2)) for p, t in batches]
    assert mean_iou(cm) != pytest.approx(sum(per_batch) / 2)
