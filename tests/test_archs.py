"""The DAFormer-line archs: SegFormer and DAFormer on MiT, DPT and UPerNet on a DINOv2 ViT (patch 14); their contract
with Segmenter (logits, forward_features, classifier, output_stride), DAFormer's decoder size against DAFormer's
own configuration, and the decoder / head learning rate."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import torch
from conftest import tiny_datamodule

from adapt.errors import ConfigError
from adapt.inference import predict, predict_padded
from adapt.nets.daformer import DAFormer
from adapt.nets.segmenter import build_segmenter
from adapt.nets.vit import DPT, ViTUPerNet
from adapt.tasks import SegmentationTask

DINO = "tu-vit_small_patch14_dinov2"
# arch, encoder, an input size it takes, output stride, channels of the deepest features
CASES = [("segformer", "mit_b0", (64, 96), 32, 256), ("daformer", "mit_b0", (64, 96), 32, 256),
         ("dpt", DINO, (56, 84), 14, 384), ("upernet", DINO, (56, 84), 14, 384)]


@pytest.mark.parametrize("arch, encoder, size, stride, depth", CASES, ids=[c[0] for c in CASES])
def test_arch_contract(arch, encoder, size, stride, depth):
    """Logits [B, C, H, W]; forward_features gives the same logits and the deepest features; the classifier is
    the last layer (a constant classifier makes constant logits); predict_padded takes odd sizes."""
    torch.manual_seed(0)
    segmenter = build_segmenter(arch, encoder, None, num_classes=5).eval()
    assert segmenter.output_stride == stride
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        logits = segmenter(x)
        again, deepest = segmenter.forward_features(x)
    assert logits.shape == (2, 5, *size) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert torch.allclose(again, logits, atol=1e-5)
    assert deepest.shape == (2, depth, -(-size[0] // stride), -(-size[1] // stride))
    with torch.no_grad():  # what the feature distance and the gap report read from the encoder alone
        assert torch.allclose(segmenter.net.encoder(segmenter.normalize(x))[-1], deepest, atol=1e-5)
    classifier = segmenter.classifier
    assert isinstance(classifier, torch.nn.Conv2d) and classifier.out_channels == 5
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.copy_(torch.arange(5.0))
        constant = segmenter(x)
    assert torch.allclose(constant, torch.arange(5.0).view(1, 5, 1, 1).expand_as(constant), atol=1e-5)
    with torch.no_grad():  # padded to the segmenter's output_stride (32 would not fit a patch-14 ViT)
        odd = predict_padded(segmenter, torch.rand(1, 3, 45, 77))
        slide = predict(segmenter, torch.rand(1, 3, 45, 77), {"mode": "slide", "window": [33, 40], "stride": [20, 20]})
    assert odd.shape == slide.shape == (1, 5, 45, 77)


def test_vit_input_must_be_a_multiple_of_the_patch():
    segmenter = build_segmenter("dpt", DINO, None, num_classes=3).eval()
    assert isinstance(segmenter.net, DPT)
    with pytest.raises(ConfigError, match="input 50x56: .*patch size 14; set data.init_args.crop_size") as err:
        segmenter(torch.rand(1, 3, 50, 56))
    assert "say 42x56" in str(err.value) and "predict_padded" in str(err.value)
    with pytest.raises(ConfigError, match="'resnet18' is not a plain ViT"):
        build_segmenter("dpt", "resnet18", None, num_classes=3)


def test_upernet_picks_the_vit_path_only_for_plain_vits():
    assert isinstance(build_segmenter("upernet", "resnet18", None, 3).net, smp.UPerNet)
    assert isinstance(build_segmenter("upernet", DINO, None, 3).net, ViTUPerNet)


def test_dpt_on_patch16_at_multiples_of_32_is_smps_dpt():
    """Nothing is resampled there: smp's DPT with our weights computes the same logits."""
    torch.manual_seed(0)
    ours = build_segmenter("dpt", "tu-vit_tiny_patch16_224", None, num_classes=4).net.eval()
    theirs = smp.DPT("tu-vit_tiny_patch16_224", encoder_weights=None, classes=4, dynamic_img_size=True).eval()
    theirs.load_state_dict(ours.state_dict())  # same modules, same names
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_daformer_decoder_size_matches_daformers_configuration():
    """Decoder + classifier parameters for MiT-B5, 19 classes, as DAFormer's ``daformer_sepaspp_mitb5.py``
    (``DAFormerHead``: embed_dims 256, fusion ``aspp`` with sep=True, dilations (1, 6, 12, 18), pool False, BN)."""
    channels, embed, classes, dilations = (64, 128, 320, 512), 256, 19, (1, 6, 12, 18)
    fused = embed * len(channels)
    reference = sum(c * embed + embed for c in channels)  # embed_layers[i]: MLP = nn.Linear(c_i, 256) with bias
    for dilation in dilations:  # fuse_layer.aspp_modules (DepthwiseSeparableASPPModule), one branch per dilation
        if dilation == 1:
            reference += fused * embed + 2 * embed  # ConvModule 1x1 (bias off before BN) + BN(256)
        else:  # DepthwiseSeparableConvModule: depthwise 3x3 + BN(1024), pointwise 1x1 + BN(256), no biases
            reference += fused * 9 + 2 * fused + fused * embed + 2 * embed
    reference += len(dilations) * embed * embed * 9 + 2 * embed  # fuse_layer.bottleneck: ConvModule 3x3 + BN
    reference += embed * classes + classes  # conv_seg: nn.Conv2d(256, 19, 1) with bias
    net = DAFormer("mit_b5", None, classes=classes)
    ours = sum(p.numel() for module in (net.decoder, net.segmentation_head) for p in module.parameters())
    assert ours == reference == 3_712_275  # the issue asks for 1 %; the count agrees exactly (README states it)
    assert [m.in_channels for m in net.decoder.embed] == list(channels)


def test_head_lr_factor_sets_the_groups():
    task = SegmentationTask(arch="daformer", encoder_name="mit_b0", class_names=["a", "b", "c"], lr=6e-5,
                            head_lr_factor=10, encoder_lr_factor=0.5, lr_schedule="constant")
    groups = task.configure_optimizers().param_groups
    assert [g["lr"] for g in groups] == pytest.approx([6e-4, 3e-5])
    encoder = {id(p) for p in task.segmenter.net.encoder.parameters()}
    net = task.segmenter.net
    rest = {id(p) for module in (net.decoder, net.segmentation_head) for p in module.parameters()}
    assert {id(p) for p in groups[1]["params"]} == encoder
    assert {id(p) for p in groups[0]["params"]} == rest and not rest & encoder
    assert sum(len(g["params"]) for g in groups) == len(list(task.parameters()))


def test_daformer_task_trains_a_step(tiny_pair):
    dm = tiny_datamodule(tiny_pair)
    task = SegmentationTask(arch="daformer", encoder_name="mit_b0", class_names=dm.class_names, lr=6e-5,
                            head_lr_factor=10, segmenter_kwargs={"decoder_channels": 32})
    before = task.segmenter.classifier.weight.detach().clone()
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, dm)
    assert trainer.global_step == 1
    assert not torch.equal(before, task.segmenter.classifier.weight.detach())
    assert [g["initial_lr"] for g in trainer.optimizers[0].param_groups] == pytest.approx([6e-4, 6e-5])


def test_unknown_arch_lists_the_archs():
    with pytest.raises(ConfigError, match="arch: unknown 'segnet'; choose one of") as err:
        build_segmenter("segnet", "resnet18", None, 3)
    for arch in ("daformer", "dpt", "segformer", "upernet", "unet"):
        assert f"'{arch}'" in str(err.value)
