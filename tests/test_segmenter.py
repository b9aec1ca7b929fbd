import pytest
import torch

from adapt.errors import ConfigError
from adapt.inference import predict_padded
from adapt.nets.segmenter import ARCHS, build_segmenter


@pytest.mark.parametrize("arch", sorted(set(ARCHS) - {"dpt"}))  # dpt takes ViTs only: tests/test_archs.py
def test_each_arch_gives_logits_of_input_size(arch):
    segmenter = build_segmenter(arch, "resnet18", None, num_classes=7).eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        logits = segmenter(x)
    assert logits.shape == (2, 7, 64, 96) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_normalization_is_inside_the_module():
    segmenter = build_segmenter("unet", "resnet18", None, num_classes=3)
    buffers = dict(segmenter.named_buffers())
    assert buffers["mean"].flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert buffers["std"].flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])
    assert {"mean", "std"} <= set(segmenter.state_dict())  # saved with F: every loader normalizes alike
    # forward normalises before the network: with an identity net, segmenter(x) is (x - mean) / std
    segmenter.net = torch.nn.Identity()
    x = torch.rand(2, 3, 8, 12)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        seen = segmenter(x)
    assert seen.shape == x.shape
    assert torch.allclose(seen, (x - mean) / std, atol=1e-6)
    assert not torch.allclose(seen, x, atol=1e-2)  # the input did not pass through unchanged


def test_padded_prediction_handles_any_size():
    segmenter = build_segmenter("fpn", "resnet18", None, num_classes=4).eval()
    with torch.no_grad():
        assert predict_padded(segmenter, torch.rand(1, 3, 45, 70)).shape == (1, 4, 45, 70)


def test_offline_imagenet_weights_fail_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    # refused by the check before any network is built or a download tried (smp's own failure says "could not
    # fetch"), so it cannot wait on a hub timeout: building the smp model here would fail the test
    def no_build(*args, **kwargs):
        raise AssertionError("the smp model was built (and its weights fetched) before the offline check")

    monkeypatch.setitem(ARCHS, "unet", no_build)
    with pytest.raises(ConfigError, match="not in the Hugging Face cache and the hub cannot be reached") as err:
        build_segmenter("unet", "resnet18", "imagenet", num_classes=3)
    assert str(err.value).startswith("encoder_weights: 'imagenet' weights for resnet18")
    assert "encoder_weights: null" in str(err.value)


def test_local_encoder_weights_file(tmp_path):
    source = build_segmenter("unet", "resnet18", None, num_classes=3)
    path = tmp_path / "encoder.pth"
    torch.save(source.net.encoder.state_dict(), path)
    loaded = build_segmenter("unet", "resnet18", str(path), num_classes=3)
    for (name, a), b in zip(source.net.encoder.state_dict().items(), loaded.net.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="not found"):
        build_segmenter("unet", "resnet18", str(tmp_path / "missing.pth"), num_classes=3)


def test_unknown_arch_and_encoder():
    with pytest.raises(ConfigError, match="arch"):
        build_segmenter("segnet", "resnet18", None, 3)
    with pytest.raises(ConfigError, match="encoder_name"):
        build_segmenter("unet", "resnet1800", None, 3)
