"""HRDA's scale attention, fusion, detail crops, losses and inference against the official HRDA (lhoyer/MIC
2f932a98: ``hrda_head.py``, ``hrda_encoder_decoder.py``, ``daformer_head.py``, ``gtaHR2csHR_hrda.py``), each
recomputed in the test from the official formula on a tiny DAFormer (MiT-B0) on CPU."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn
from torch.nn import functional as nnf

from adapt.errors import ConfigError
from adapt.nets.daformer import DAFormerHead
from adapt.nets.hrda import MultiResolution, check_settings
from adapt.nets.segmenter import build_segmenter
from adapt.tasks import ingredients

B5, B0 = (64, 128, 320, 512), (32, 64, 160, 256)  # MiT-B5's and MiT-B0's four levels


def official_attention_layers(channels, embed: int = 256, classes: int = 19) -> dict[str, tuple[int, ...]]:
    """The parameters of ``HRDAHead.scale_attention`` for ``single_scale_head='DAFormerHead'``: the head's config
    (``daformer_sepaspp_mitb5.py``) with ``channels`` and ``embed_dims`` = ``attention_embed_dim`` (256) and the
    ``aspp`` fusion replaced by ``dict(type='conv', kernel_size=1, act_cfg=ReLU, norm_cfg=BN)``."""
    layers = {}
    for i, c in enumerate(channels):  # embed_layers: MLP = nn.Linear(c_i, 256)
        layers[f"embed_layers.{i}.proj.weight"], layers[f"embed_layers.{i}.proj.bias"] = (embed, c), (embed,)
    layers["fuse_layer.conv.weight"] = (embed, embed * len(channels), 1, 1)  # ConvModule: no bias before a norm
    layers["fuse_layer.bn.weight"], layers["fuse_layer.bn.bias"] = (embed,), (embed,)
    layers["conv_seg.weight"], layers["conv_seg.bias"] = (classes, embed, 1, 1), (classes,)  # BaseDecodeHead
    return layers


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _upsampling(out: int, size: int) -> torch.Tensor:
    """float [out, size]: bilinear resizing (half-pixel centres, edges clamped) as a matrix, written out by hand."""
    matrix = torch.zeros(out, size)
    for i in range(out):
        source = max((i + 0.5) * size / out - 0.5, 0.0)
        low = min(math.floor(source), size - 1)
        high, frac = min(low + 1, size - 1), source - low
        matrix[i, low] += 1 - frac
        matrix[i, high] += frac
    return matrix


def up(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """mmseg's ``resize`` (bilinear, align_corners False) of [B, C, h, w] to [B, C, height, width], by hand."""
    rows, cols = _upsampling(height, t.shape[-2]), _upsampling(width, t.shape[-1])
    return torch.einsum("hi,bcij,wj->bchw", rows, t, cols)


@pytest.fixture(scope="module")
def daformer():
    torch.manual_seed(0)
    return build_segmenter("daformer", "mit_b0", None, num_classes=3).enable_multi_resolution(0.5, (64, 64)).eval()


def test_attention_head_size_matches_hrdas_configuration(daformer):
    reference = official_attention_layers(B5)
    total = sum(math.prod(shape) for shape in reference.values())
    assert total == 4 * 256 + 256 * sum(B5) + 1024 * 256 + 2 * 256 + 256 * 19 + 19 == 530_707
    head = DAFormerHead(B5, 19, 256, dropout=0.1, fusion="conv")  # what DAFormer.scale_attention_head builds
    assert _count(head) == total
    ours = sorted(tuple(p.shape) for p in head.parameters())  # layer by layer (a Linear as a 1x1 convolution)
    theirs = sorted(s if not k.endswith("proj.weight") else (*s, 1, 1) for k, s in reference.items())
    assert ours == theirs
    fuse = head.decoder.fuse  # one 1x1 convolution without bias, BatchNorm, ReLU; no branches, no bottleneck
    assert [type(m) for m in fuse] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] and fuse[0].kernel_size == (1, 1)
    assert fuse[0].bias is None and not hasattr(head.decoder, "branches") and head.decoder.dropout.p == 0.1
    # F's attention head: that head on F's encoder levels, F's width, dropout and classes (MiT-B0, 3 classes)
    attention = daformer.multi_resolution.attention
    assert isinstance(attention, DAFormerHead) and attention.decoder.fusion == "conv"
    assert _count(attention) == sum(math.prod(s) for s in official_attention_layers(B0, classes=3).values())
    assert daformer.multi_resolution.classifier is attention.classifier and attention.classifier.out_channels == 3
    assert not set(map(id, attention.parameters())) & set(map(id, daformer.net.parameters()))
    torch.manual_seed(1)  # mmseg's conv_seg init: normal, std 0.01, bias 0
    classifier = DAFormerHead(B5, 19).classifier
    assert abs(classifier.weight.std().item() - 0.01) < 0.001 and not classifier.bias.any()


@torch.no_grad()
def test_attention_reads_the_context_crops_encoder_features(daformer):
    """``get_scale_attention(inputs[0])``: the attention head sees the encoder levels of the context pass (the very
    tensors F's decoder sees), not F's decoder output."""
    net, hrda = daformer.net, daformer.multi_resolution
    encoded, decoded, attended = [], [], []
    hooks = [net.encoder.register_forward_hook(lambda m, args, out: encoded.append((args[0], out))),
             net.decoder.register_forward_pre_hook(lambda m, args: decoded.append(args[0])),
             hrda.attention.decoder.register_forward_pre_hook(lambda m, args: attended.append(args[0]))]
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    try:
        out = hrda.forward_train(daformer, x, (8, 56))
    finally:
        for hook in hooks:
            hook.remove()
    context = x.reshape(1, 3, 64, 2, 64, 2).mean((3, 5))
    assert len(encoded) == 2 and len(decoded) == 2 and len(attended) == 1
    torch.testing.assert_close(encoded[0][0], daformer.normalize(context))  # the context pass first
    torch.testing.assert_close(encoded[1][0], daformer.normalize(x[..., 8:72, 56:120]))  # then the detail crop
    assert all(a is b for a, b in zip(attended[0], encoded[0][1][-4:]))  # the context's encoder levels
    assert all(a is b for a, b in zip(decoded[0], encoded[0][1][-4:]))
    torch.testing.assert_close(out.attention, torch.sigmoid(hrda.attention(encoded[0][1][-4:])))


@torch.no_grad()
def test_fusion_runs_at_stride_4_then_the_logits_are_upsampled(daformer):
    """``HRDAHead.forward`` with scales [0.5, 1], os 4 and a detail box (24, 40) of 64 px in a 128 px crop:
    attention masked on the context's stride-4 grid (box / 8), ``(1 - a) * c`` and ``a`` upsampled x2, the detail's
    stride-4 logits inserted at box / 4, fused at stride 4 (32 x 32); mmseg's ``losses`` upsample to 128 x 128."""
    net, hrda = daformer.net, daformer.multi_resolution
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    out = hrda.forward_train(daformer, x, (24, 40))
    levels = net.encoder(daformer.normalize(x.reshape(1, 3, 64, 2, 64, 2).mean((3, 5))))[-4:]
    c = net.segmentation_head(net.decoder(levels))  # [1, 3, 16, 16]: stride 4 of the 64 px context
    a = torch.sigmoid(hrda.attention(levels))
    d = net.segmentation_head(net.decoder(net.encoder(daformer.normalize(x[..., 24:88, 40:104]))[-4:]))
    assert c.shape == a.shape == d.shape == (1, 3, 16, 16)
    mask = torch.zeros(16, 16)
    mask[24 // 8:88 // 8, 40 // 8:104 // 8] = 1
    inserted = torch.zeros(1, 3, 32, 32)
    inserted[..., 24 // 4:88 // 4, 40 // 4:104 // 4] = d
    fused = up(a * mask, 32, 32) * inserted + up((1 - a * mask) * c, 32, 32)
    torch.testing.assert_close(hrda.fuse(c, a, d, (24, 40)), fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.fused, up(fused, 128, 128), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.detail, up(d, 64, 64), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.context, c, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.attention, a, atol=1e-5, rtol=1e-5)
    assert out.fused.shape == (1, 3, 128, 128) and out.detail.shape == (1, 3, 64, 64)
    # F's own forward is these stride-4 logits upsampled
    torch.testing.assert_close(daformer.single_scale(x[..., 24:88, 40:104]), up(d, 64, 64), atol=1e-5, rtol=1e-5)
    # fusing the upsampled logits at full resolution (adapt's earlier order) gives other logits
    padded = nnf.pad(up(d, 64, 64), (40, 128 - 104, 24, 128 - 88))
    full = up(a * mask, 128, 128) * padded + up((1 - a * mask) * c, 128, 128)
    assert (full - out.fused).abs().max() > 1e-4


def test_detail_offsets_are_multiples_of_8_drawn_as_hrda_draws_them(daformer):
    """``get_crop_bbox(1024, 1024, [512, 512], divisible=8)``: offset = 8 * randint(0, (512 + 1) // 8), uniform
    over {0, 8, ..., 504} (the last aligned position, 512, is never drawn)."""
    assert daformer.multi_resolution.grid == 8 == 4 * 2  # crop_coord_divisible: output stride 4 x 1 / 0.5
    hrda = MultiResolution(nn.Identity(), "", 0.5, (512, 512), 32, logit_stride=4)
    generator = torch.Generator().manual_seed(0)
    draws = [hrda.sample_box((1024, 1024), generator) for _ in range(6400)]
    official = {8 * i for i in range((1024 - 512 + 1) // 8)}
    assert len(official) == 64 and max(official) == 504
    for side in (0, 1):
        counts = Counter(box[side] for box in draws)
        assert set(counts) == official
        expected, sd = 6400 / 64, (6400 * (1 / 64) * (63 / 64)) ** 0.5
        assert all(abs(n - expected) < 5 * sd for n in counts.values())  # within 5 binomial standard deviations
        chi2 = sum((n - expected) ** 2 / expected for n in counts.values())
        assert chi2 < 63 + 5 * (2 * 63) ** 0.5  # 63 degrees of freedom
    # a margin that is no multiple of 8 (1000 - 512 = 488): (488 + 1) // 8 = 61 offsets, 0 .. 480
    tops = {hrda.sample_box((1000, 512), generator)[0] for _ in range(3000)}
    assert tops == {8 * i for i in range(61)} and hrda.sample_box((512, 512), generator) == (0, 0)
    assert hrda.sample_box((1024, 1024), torch.Generator().manual_seed(5)) == hrda.sample_box(
        (1024, 1024), torch.Generator().manual_seed(5))
    check_settings(0.5, (512, 512), 32, (1024, 1024), logit_stride=4)  # HRDA's own: 512 fits F and the grid
    with pytest.raises(ConfigError, match=r"detail_crop: \[48, 48\]; give two positive multiples of F's output"):
        check_settings(0.5, (48, 48), 32, logit_stride=4)
    with pytest.raises(ConfigError, match=r"multiples of 64 \(F's output stride 32 and the fusion grid 64\)"):
        check_settings(1 / 16, (32, 32), 32, logit_stride=4)  # a 1/16 context: boxes on 64 px


def test_losses_weigh_fused_and_detail_as_hrda(daformer):
    """``HRDAHead.losses`` with ``hr_loss_weight`` 0.1, ``lr_loss_weight`` 0: 0.9 x CE(fused resized to the labels)
    + 0.1 x CE(detail resized to the crop's labels, ``crop(seg_label, hr_crop_box)``, weights cropped alike)."""
    settings = ingredients.MultiResolution()
    assert (settings.context_scale, tuple(settings.detail_crop), settings.detail_loss_weight) == (0.5, (512, 512), 0.1)
    hrda = daformer.multi_resolution
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 3, (2, 128, 128), generator=torch.Generator().manual_seed(5))
    weight = torch.rand(2, 128, 128, generator=torch.Generator().manual_seed(6))

    def mean(total, count):
        return total / count, (total / count).detach()

    with torch.no_grad():
        loss, value, passed = ingredients.multi_resolution_loss(daformer, x, y, weight, torch.Generator().manual_seed(7),
                                                                0.1, mean)
        top, left = hrda.sample_box((128, 128), torch.Generator().manual_seed(7))
        assert passed.box == (top, left) and top % 8 == 0 and left % 8 == 0
        out = hrda.forward_train(daformer, x, (top, left))
    ce = nnf.cross_entropy(out.fused, y, reduction="none") * weight
    box = (slice(None), slice(top, top + 64), slice(left, left + 64))
    ce_detail = nnf.cross_entropy(out.detail, y[box], reduction="none") * weight[box]
    expected = 0.9 * ce.sum() / y.numel() + 0.1 * ce_detail.sum() / y[box].numel()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(value, expected)


@torch.no_grad()
def test_inference_averages_the_detail_windows_at_stride_4_in_one_batch(daformer):
    """``encode_decode`` with ``hr_slide_inference``: the context pass, the detail windows (crop 32, stride 16)
    encoded as one batch (``extract_slide_feat``), their stride-4 logits averaged on the stride-4 grid
    (``decode_hr``: boxes / 4), fused without a box, upsampled to the input (``upscale_pred``)."""
    hrda = MultiResolution(daformer.multi_resolution.attention, "segmentation_head.0", 0.5, (32, 32), 32, 4)
    net = daformer.net
    calls = []
    hook = net.encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    try:
        predicted = hrda.predict(daformer, x)
    finally:
        hook.remove()
    assert calls == [2, 2 * 9]  # the context, then the 3 x 3 windows of both images in one pass
    levels = net.encoder(daformer.normalize(x.reshape(2, 3, 32, 2, 32, 2).mean((3, 5))))[-4:]
    c, a = net.segmentation_head(net.decoder(levels)), torch.sigmoid(hrda.attention(levels))  # [2, 3, 8, 8]
    boxes = [(top, left) for top in (0, 16, 32) for left in (0, 16, 32)]  # extract_slide_feat's grid
    windows = torch.cat([x[..., t:t + 32, l:l + 32] for t, l in boxes])
    logits = net.segmentation_head(net.decoder(net.encoder(daformer.normalize(windows))[-4:])).split(2)
    total, count = torch.zeros(2, 3, 16, 16), torch.zeros(16, 16)
    for (t, l), part in zip(boxes, logits):
        total[..., t // 4:t // 4 + 8, l // 4:l // 4 + 8] += part
        count[t // 4:t // 4 + 8, l // 4:l // 4 + 8] += 1
    assert count[0, 0] == 1 and count[6, 6] == 4 and count[6, 0] == 2
    fused = up(a, 16, 16) * (total / count) + up((1 - a) * c, 16, 16)  # no box: the attention everywhere
    torch.testing.assert_close(predicted, up(fused, 64, 64), atol=1e-5, rtol=1e-5)
    # averaging upsampled windows instead (at full resolution) differs at the window borders
    full = sum(nnf.pad(up(p, 32, 32), (l, 32 - l, t, 32 - t)) for (t, l), p in zip(boxes, logits))
    counts = torch.zeros(64, 64)
    for t, l in boxes:
        counts[t:t + 32, l:l + 32] += 1
    other = up(a, 64, 64) * full / counts + up((1 - a) * c, 64, 64)
    assert (other - predicted).abs().max() > 1e-5
