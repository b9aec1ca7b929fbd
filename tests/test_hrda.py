"""HRDA's multi-resolution F on nets other than DAFormer (logit stride 1; tests/test_official_hrda.py checks DAFormer
against the official HRDA): the fusion, the detail crops, the sliding pseudo-labels, computed again by hand; the
attention head as a copy of F's decoder; a tiny run through the real CLI whose checkpoint evaluates with the fusion;
bad settings and old checkpoints as one line."""

from __future__ import annotations

import json
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import adapt_main
from test_daformer_mic import NAMES, _logged
from test_official_hrda import up as _up
from test_self_training import _self_training_recipe
from torch import nn
from torch.nn import functional as nnf

from adapt.errors import ConfigError
from adapt.nets.hrda import MultiResolution
from adapt.nets.segmenter import build_segmenter
from adapt.tasks import SelfTrainingTask
from adapt.tasks import ingredients  # its MultiResolution: the recipe's settings; adapt.nets.hrda's: the module

DETAIL = (32, 32)  # in 64 x 64 crops; the context is 32 x 32
HRDA = ingredients.MultiResolution(detail_crop=DETAIL)


def _segmenter(seed: int = 0):
    torch.manual_seed(seed)
    return build_segmenter("fpn", "resnet18", None, num_classes=len(NAMES)).enable_multi_resolution(0.5, DETAIL)


@torch.no_grad()
def test_fused_logits_are_the_attention_weighted_sum_of_the_two_scales():
    segmenter = _segmenter().eval()
    hrda = segmenter.multi_resolution
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    top, left = 32, 0
    out = hrda.forward_train(segmenter, x, (top, left))
    # the context is x at half resolution (each pixel the mean of a 2 x 2 block), the detail the box at full
    context_image = x.reshape(2, 3, 32, 2, 32, 2).mean((3, 5))
    torch.testing.assert_close(out.context, segmenter.single_scale(context_image), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.detail, segmenter.single_scale(x[..., 32:64, 0:32]), atol=1e-5, rtol=1e-5)
    assert out.attention.shape == (2, len(NAMES), 32, 32) and 0 <= out.attention.min() <= out.attention.max() <= 1
    head = hrda.attention  # a second decoder + classifier on the context's encoder features
    features = segmenter.net.encoder(segmenter.normalize(context_image))
    torch.testing.assert_close(out.attention, torch.sigmoid(head.segmentation_head(head.decoder(features))))
    # HRDA's fusion: the attention zeroed outside the box (context pixels 16:32 x 0:16), weighing the detail
    attention = torch.zeros_like(out.attention)
    attention[..., 16:32, 0:16] = out.attention[..., 16:32, 0:16]
    inserted = torch.zeros(2, len(NAMES), 64, 64)
    inserted[..., 32:64, 0:32] = out.detail
    expected = _up(attention, 64, 64) * inserted + _up((1 - attention) * out.context, 64, 64)
    torch.testing.assert_close(out.fused, expected, atol=1e-5, rtol=1e-5)
    # away from the box (beyond bilinear's one-pixel seam) the fused logits are the upsampled context's
    plain = _up(out.context, 64, 64)
    torch.testing.assert_close(out.fused[..., :31, :], plain[..., :31, :], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.fused[..., :, 33:], plain[..., :, 33:], atol=1e-5, rtol=1e-5)
    inside = (out.fused - plain)[..., 33:63, 1:31].abs()
    assert inside.max() > 1e-3  # where the detail counts, it changes the prediction


def test_detail_crops_lie_inside_the_crop_on_the_fusion_grid():
    """HRDA's ``get_crop_bbox`` with divisible g = k x logit stride (2 for a net with full-resolution logits at
    context scale 0.5): each offset g * randint((side - crop + 1) // g), uniform."""
    hrda = MultiResolution(nn.Identity(), "", 0.5, (32, 64))
    assert hrda.grid == 2 and _segmenter().multi_resolution.grid == 2
    generator = torch.Generator().manual_seed(0)
    for size in ((64, 64), (128, 96), (32, 64)):
        boxes = [hrda.sample_box(size, generator) for _ in range(2000)]
        for side, crop in enumerate((32, 64)):
            offsets = Counter(box[side] for box in boxes)
            choices = max((size[side] - crop + 1) // 2, 1)  # a side the crop fills: offset 0
            assert set(offsets) == {2 * i for i in range(choices)}  # multiples of 2 whose crop fits, but the last
            if choices > 1:
                expected, sd = 2000 / choices, (2000 / choices * (1 - 1 / choices)) ** 0.5
                assert all(abs(n - expected) < 5 * sd for n in offsets.values())
    assert hrda.sample_box((128, 96), torch.Generator().manual_seed(7)) == hrda.sample_box(
        (128, 96), torch.Generator().manual_seed(7))
    # in a training step, the student's detail pass sees such a crop of the source batch
    torch.manual_seed(0)
    task = SelfTrainingTask(arch="fpn", class_names=NAMES, multi_resolution=HRDA, mixing=None)
    seen = []
    encode = task.segmenter.encode
    task.segmenter.encode = lambda x: seen.append(x) or encode(x)
    _logged(task)
    x_s = torch.rand(2, 3, 64, 64)
    batch = {"source": {"image": x_s, "mask": torch.randint(0, len(NAMES), (2, 64, 64))},
             "target": {"image": torch.rand(2, 3, 64, 64)}}
    task.training_step(batch, 0)
    detail = seen[1]  # the source pass: context, then detail
    crops = [x_s[..., t:t + 32, l:l + 32] for t in range(0, 32, 2) for l in range(0, 32, 2)]
    assert detail.shape == (2, 3, 32, 32) and sum(torch.equal(detail, c) for c in crops) == 1


@torch.no_grad()
def _fused_by_hand(f, x: torch.Tensor) -> torch.Tensor:
    """HRDA's inference of an fpn F (logits at full resolution) on x [B, 3, 64, 64] with 32 px detail windows: the
    context's logits and attention, the 3 x 3 windows (stride 16, the last at the border) in one batch, averaged."""
    net, head, batch = f.net, f.multi_resolution.attention, x.shape[0]
    # HRDA's resize by 0.5 (a train-mode teacher's BatchNorm over 1 x 1 maps magnifies rounding: no 2 x 2 means here)
    features = net.encoder(f.normalize(nnf.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)))
    context = net.segmentation_head(net.decoder(features))
    attention = torch.sigmoid(head.segmentation_head(head.decoder(features)))
    boxes = [(top, left) for top in (0, 16, 32) for left in (0, 16, 32)]
    windows = net(f.normalize(torch.cat([x[..., t:t + 32, l:l + 32] for t, l in boxes]))).split(batch)
    total, count = torch.zeros(batch, len(NAMES), 64, 64), torch.zeros(64, 64)
    for (top, left), logits in zip(boxes, windows):
        total[..., top:top + 32, left:left + 32] += logits
        count[top:top + 32, left:left + 32] += 1
    assert count[0, 0] == 1 and count[20, 20] == 4 and count[20, 0] == 2
    return _up(attention, 64, 64) * (total / count) + _up((1 - attention) * context, 64, 64)


@torch.no_grad()
def test_pseudo_labels_average_overlapping_detail_windows():
    torch.manual_seed(0)
    task = SelfTrainingTask(arch="fpn", class_names=NAMES, multi_resolution=HRDA, mixing=None)
    teacher = task.teacher
    x_t = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(teacher(x_t), _fused_by_hand(teacher, x_t), atol=1e-5, rtol=1e-5)
    # the training step labels the target batch with that prediction of the teacher (in the teacher's state then)
    labelled = []
    hook = teacher.register_forward_hook(lambda module, inputs, output: labelled.append(
        (inputs[0], output, _fused_by_hand(module, inputs[0]))))
    with torch.enable_grad():
        _logged(task)
        task.training_step({"source": {"image": torch.rand(2, 3, 64, 64),
                                       "mask": torch.randint(0, len(NAMES), (2, 64, 64))},
                            "target": {"image": x_t}}, 0)
    hook.remove()
    assert len(labelled) == 1 and torch.equal(labelled[0][0], x_t)
    torch.testing.assert_close(labelled[0][1], labelled[0][2], atol=1e-5, rtol=1e-5)
    # any input size: padded to the context's multiple, cropped back
    assert teacher(torch.rand(1, 3, 45, 77)).shape == (1, len(NAMES), 45, 77)


def test_feature_distance_with_hrda_compares_the_contexts_features():
    # eval: no drop-path draws, so the pass can be repeated by hand
    task = SelfTrainingTask(arch="fpn", encoder_name="timm-tf_efficientnet_lite0", encoder_weights="imagenet",
                            class_names=NAMES, multi_resolution=ingredients.MultiResolution(detail_crop=(64, 64)),
                            feature_distance=ingredients.FeatureDistance(), mixing=None).eval()
    with torch.no_grad():  # a student whose encoder has moved away from ImageNet's
        for parameter in task.segmenter.net.encoder.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    values = _logged(task)
    x_s, y_s = torch.rand(2, 3, 128, 128), torch.full((2, 128, 128), NAMES.index("road"))
    y_s[:, :64, :64] = NAMES.index("car")  # a thing over one of the context's 2 x 2 feature cells
    task.training_step({"source": {"image": x_s, "mask": y_s}, "target": {"image": torch.rand(2, 3, 128, 128)}}, 0)
    context = task.segmenter.normalize(x_s.reshape(2, 3, 64, 2, 64, 2).mean((3, 5)))
    with torch.no_grad():
        features, reference = task.segmenter.net.encoder(context)[-1], task.imagenet_encoder(context)[-1]
    assert features.shape[-2:] == (2, 2)
    by_hand = (features - reference).norm(dim=1)[:, 0, 0].mean()
    assert by_hand > 0
    torch.testing.assert_close(values["train/feature_distance"], by_hand, atol=1e-4, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("arch, encoder, side", [("fpn", "resnet18", 64), ("fcn", "resnet18", 64),
                                                 ("dpt", "tu-vit_small_patch14_dinov2", 56)])
def test_every_arch_gets_a_copy_of_its_decoder_as_attention_and_the_context_features(arch, encoder, side):
    """Nets other than DAFormer: the attention is a fresh copy of F's decoder and classifier (no encoder, no shared
    parameter) on the context's encoder features; the context pass returns the encoder's deepest features for the
    feature distance, CNNs and plain ViTs (whose nets call the encoder's token pass) alike."""
    torch.manual_seed(0)
    segmenter = build_segmenter(arch, encoder, None, num_classes=len(NAMES)).eval()
    stride = segmenter.output_stride
    multi = segmenter.enable_multi_resolution(0.5, (stride, stride)).multi_resolution
    head, net = multi.attention, segmenter.net
    assert sum(p.numel() for p in head.parameters()) == sum(p.numel() for p in net.parameters()) - sum(
        p.numel() for p in net.encoder.parameters())
    assert not set(map(id, head.parameters())) & set(map(id, net.parameters()))
    assert multi.classifier.out_channels == len(NAMES) and not torch.equal(multi.classifier.weight,
                                                                           segmenter.classifier.weight)
    x = torch.rand(1, 3, 2 * side, 2 * side)
    logits, attention, features = multi.context_pass(segmenter, x, features=True)
    expected_logits, expected_features = segmenter.forward_features(multi.context_image(x))
    assert features is not None and attention.shape == logits.shape and segmenter.logit_stride == 1
    torch.testing.assert_close(features, expected_features)
    torch.testing.assert_close(logits, expected_logits)


def test_hrda_run_through_the_cli_evaluates_with_the_fusion(tmp_path, tiny_pair, capsys):
    recipe = _self_training_recipe(tmp_path, tiny_pair, multi_resolution={"detail_crop": list(DETAIL)},
                                   lambda_entropy=0.1)
    config = yaml.safe_load(recipe.read_text())
    config["trainer"].update(max_steps=2, val_check_interval=2, limit_val_batches=1)  # validates (slide) at step 2
    config["data"]["init_args"].update(batch_size=2)
    recipe.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    code, _, err = adapt_main(capsys, "fit", "--config", str(recipe), f"--trainer.default_root_dir={run_dir}")
    assert code == 0, err[-3000:]
    lines = next(run_dir.rglob("metrics.csv")).read_text().splitlines()
    header, rows = lines[0].split(","), [line.split(",") for line in lines[1:]]
    for column in ("train/loss_source", "train/loss_mixed", "train/entropy", "val/miou"):
        values = [float(row[header.index(column)]) for row in rows if row[header.index(column)]]
        assert values and all(math.isfinite(v) for v in values), column
    ckpt_path = next(run_dir.rglob("last.ckpt"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["multi_resolution"] == {"context_scale": 0.5, "detail_crop": list(DETAIL),
                                                            "detail_loss_weight": 0.1}
    assert any(k.startswith("segmenter.multi_resolution.") for k in ckpt["state_dict"])
    assert any(k.startswith("teacher.multi_resolution.") for k in ckpt["state_dict"])

    out = tmp_path / "eval"
    code, _, err = adapt_main(capsys, "evaluate", "--checkpoint", str(ckpt_path), "--root", str(tiny_pair / "target"),
                              "--split", "val", "--output", str(out), "--plots", "false", "--protocol", "slide",
                              "--window", "[64, 64]", "--stride", "[32, 32]")
    assert code == 0, err[-2000:]
    scores = json.loads((out / "metrics.json").read_text())
    assert scores["protocol"]["mode"] == "slide" and scores["protocol"]["window"] == [64, 64]

    from adapt.checkpoints import load_segmenter
    from adapt.data import FolderDataset
    from adapt.inference import predict

    segmenter = load_segmenter(ckpt_path).segmenter  # the loaded F fuses: the evaluation's mIoU, recomputed with it
    assert segmenter.multi_resolution is not None
    dataset = FolderDataset(tiny_pair / "target", split="val")
    matrix = np.zeros((len(NAMES), len(NAMES)), dtype=np.int64)
    with torch.no_grad():
        for sample in dataset:
            x = sample["image"][None]
            logits = predict(segmenter, x, scores["protocol"])
            torch.testing.assert_close(logits, segmenter.multi_resolution.predict(segmenter, x))
            assert not torch.allclose(logits, segmenter.single_scale(x), atol=1e-4)
            label, pred = sample["mask"].flatten().numpy(), logits.argmax(1).flatten().numpy()
            keep = label != 255
            np.add.at(matrix, (label[keep], pred[keep]), 1)
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    iou = [100 * matrix[c, c] / union[c] for c in range(len(NAMES)) if matrix[c].sum() > 0]
    assert abs(scores["miou"] - float(np.mean(iou))) < 1e-3
    code, _, err = adapt_main(capsys, "export", "--checkpoint", str(ckpt_path), "--output", str(tmp_path / "f.onnx"))
    assert code == 2 and "is an HRDA (multi-resolution) F" in err and not (tmp_path / "f.onnx").exists(), err[-2000:]

    # a checkpoint written before the ingredients recorded HRDA as hrda: true + hrda_* keys: it still loads fused
    old = dict(ckpt, hyper_parameters={k: v for k, v in ckpt["hyper_parameters"].items() if k != "multi_resolution"})
    old["hyper_parameters"].update(hrda=True, hrda_context_scale=0.5, hrda_detail_crop=list(DETAIL),
                                   hrda_detail_loss_weight=0.1)
    torch.save(old, tmp_path / "old.ckpt")
    before = load_segmenter(tmp_path / "old.ckpt").segmenter
    assert before.multi_resolution is not None and before.multi_resolution.detail_crop == DETAIL
    x = dataset[0]["image"][None]
    with torch.no_grad():
        torch.testing.assert_close(before(x), segmenter(x))


def test_a_single_scale_f_starts_an_hrda_one_and_classes_match_by_name():
    from adapt.nets.segmenter import load_matching

    plain = build_segmenter("fpn", "resnet18", None, num_classes=len(NAMES))
    hrda = _segmenter(seed=1)
    head = {k: v.clone() for k, v in hrda.state_dict().items() if k.startswith("multi_resolution.")}
    load_matching(hrda, plain.state_dict(), NAMES, NAMES)
    state = hrda.state_dict()
    assert all(torch.equal(state[k], v) for k, v in head.items())  # the attention head keeps its initialization
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())  # the rest is the plain F
    reordered = NAMES[::-1]
    other = _segmenter(seed=2)
    load_matching(other, hrda.state_dict(), NAMES, reordered)  # an HRDA F into one with the classes reversed
    last = f"multi_resolution.attention.{other.multi_resolution.classifier_name}.weight"
    assert torch.equal(other.state_dict()[last], hrda.state_dict()[last].flip(0))  # attention rows follow names
    # a checkpoint of adapt's earlier attention (a small head on the decoder output): one line, no traceback
    old = dict(hrda.state_dict(), **{"multi_resolution.head.3.weight": torch.zeros(len(NAMES), 128, 1, 1)})
    with pytest.raises(ConfigError, match=r"^checkpoint: .*earlier small head .*multi_resolution\.head\.\*.*retrain"):
        _segmenter().load_state_dict(old)


def test_bad_hrda_settings_give_one_line(tmp_path, tiny_pair, capsys):
    for settings, words in (({"detail_crop": (40, 40)}, "multi_resolution.detail_crop: [40, 40]; give two positive "
                                                        "multiples of F's output stride 32"),
                            ({"context_scale": 0.3}, "multi_resolution.context_scale: 0.3; give 1/k"),
                            ({"detail_loss_weight": 1.5}, "multi_resolution.detail_loss_weight: 1.5")):
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")) as caught:
            SelfTrainingTask(arch="fpn", class_names=NAMES, multi_resolution=settings)
        assert "\n" not in str(caught.value)
    task = SelfTrainingTask(arch="fpn", class_names=NAMES, multi_resolution=HRDA)
    task._trainer = SimpleNamespace(datamodule=SimpleNamespace(crop_size=[64, 64]))
    task.setup("validate")  # validation slides windows of the training crop, as HRDA tests
    assert task.eval_protocol["window"] == [64, 64] and task.eval_protocol["stride"] == [32, 32]
    task._trainer.datamodule.crop_size = [96, 96]  # not a multiple of 64: the half-resolution context would not fit
    with pytest.raises(ConfigError, match=r"crop_size: \[96, 96\].*multiples of 64"):
        task.setup("validate")
    code, _, err = adapt_main(capsys, "fit", "--config", str(_self_training_recipe(tmp_path, tiny_pair,
                                                                                 multi_resolution={})),
                              f"--trainer.default_root_dir={tmp_path / 'run'}")  # HRDA's 512 detail, 64 px crops
    assert code == 2 and "Traceback" not in err, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("adapt: error: model.init_args.multi_resolution.detail_crop: [512, 512] is larger than "
                           "the training crop [64, 64]"), line
