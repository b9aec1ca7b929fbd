"""`encoder_weights: PATH` with the files users have: SegFormer's official MiT release (mit_b0.pth ...), timm
checkpoints and DINOv2's release files for `tu-` encoders. Every file here is written by the test in that format;
HF_HUB_OFFLINE=1, nothing is downloaded."""

from __future__ import annotations

import argparse
import logging

import pytest
import timm
import torch
from safetensors.torch import save_file

from adapt.errors import ConfigError
from adapt.nets.segmenter import build_segmenter

DINO, DINO_REG = "tu-vit_small_patch14_dinov2", "tu-vit_small_patch14_reg4_dinov2"
# the official configurations (mmseg mix_transformer.py, class mit_b0 / mit_b1): embed_dims, depths, sr_ratios
MIT = {"mit_b0": ((32, 64, 160, 256), (2, 2, 2, 2), (8, 4, 2, 1)),
       "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2), (8, 4, 2, 1))}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def official_mit(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict as SegFormer's release files hold it, written from the official module layout: OverlapPatchEmbed
    (proj: 7x7 from RGB, then 3x3; norm), per stage i blocks ``block{i}.{j}`` (norm1; attn.q, attn.kv, attn.proj,
    attn.sr + attn.norm where sr_ratio > 1; norm2; mlp.fc1, mlp.dwconv.dwconv (depthwise 3x3), mlp.fc2; mlp ratio 4),
    ``norm{i}``, and the ImageNet classifier ``head`` (1000 classes)."""
    dims, depths, ratios = MIT[name]
    shapes, previous = {}, 3
    for i, (dim, depth, ratio) in enumerate(zip(dims, depths, ratios), start=1):
        kernel = 7 if i == 1 else 3
        shapes.update({f"patch_embed{i}.proj.weight": (dim, previous, kernel, kernel), f"patch_embed{i}.proj.bias": (dim,),
                       f"patch_embed{i}.norm.weight": (dim,), f"patch_embed{i}.norm.bias": (dim,)})
        for j in range(depth):
            block = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.q.weight": (dim, dim), "attn.q.bias": (dim,),
                     "attn.kv.weight": (2 * dim, dim), "attn.kv.bias": (2 * dim,), "attn.proj.weight": (dim, dim),
                     "attn.proj.bias": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,),
                     "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,),
                     "mlp.dwconv.dwconv.weight": (4 * dim, 1, 3, 3), "mlp.dwconv.dwconv.bias": (4 * dim,),
                     "mlp.fc2.weight": (dim, 4 * dim), "mlp.fc2.bias": (dim,)}
            if ratio > 1:
                block.update({"attn.sr.weight": (dim, dim, ratio, ratio), "attn.sr.bias": (dim,),
                              "attn.norm.weight": (dim,), "attn.norm.bias": (dim,)})
            shapes.update({f"block{i}.{j}.{k}": v for k, v in block.items()})
        shapes.update({f"norm{i}.weight": (dim,), f"norm{i}.bias": (dim,)})
        previous = dim
    shapes.update({"head.weight": (1000, dims[-1]), "head.bias": (1000,)})
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}


def assert_encoder_holds(encoder: torch.nn.Module, expected: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Every tensor of the encoder equals the file's tensor of that name (``prefix`` + the file's name)."""
    own = encoder.state_dict()
    loaded = {k for k in own if not k.endswith("num_batches_tracked")}
    assert loaded == {prefix + k for k in expected}, sorted(loaded ^ {prefix + k for k in expected})[:5]
    for name, tensor in expected.items():
        assert torch.equal(own[prefix + name], tensor), name


@pytest.mark.parametrize("arch, wrapper", [("daformer", None), ("segformer", "state_dict"), ("daformer", "model")])
def test_official_mit_release_file(tmp_path, caplog, arch, wrapper):
    """The release file (plain, or wrapped as mmcv's load_checkpoint accepts) fills every MiT tensor; the ImageNet
    classifier is dropped and said so in one INFO line."""
    state = official_mit("mit_b0")
    path = tmp_path / "mit_b0.pth"
    torch.save(state if wrapper is None else {wrapper: state, "meta": {"epoch": 300}}, path)
    with caplog.at_level(logging.INFO, logger="adapt.nets.pretrained"):
        segmenter = build_segmenter(arch, "mit_b0", str(path), num_classes=4)
    assert_encoder_holds(segmenter.net.encoder, {k: v for k, v in state.items() if not k.startswith("head.")})
    lines = [r.getMessage() for r in caplog.records if r.name == "adapt.nets.pretrained"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "176 tensors of mit_b0" in lines[0] and "left out 2 the encoder has no place for: head.bias, head.weight" \
        in lines[0]


def test_mit_file_of_another_size_or_model_is_one_clear_line(tmp_path):
    path = tmp_path / "mit_b1.pth"
    torch.save(official_mit("mit_b1"), path)
    with pytest.raises(ConfigError) as err:
        build_segmenter("daformer", "mit_b0", str(path), num_classes=4)
    assert str(err.value) == (f"encoder_weights: {path} does not fit mit_b0: patch_embed1.proj.weight is (64, 3, 7, 7)"
                              " in the file, (32, 3, 7, 7) in the encoder; give a checkpoint of mit_b0 (the same "
                              "model size)")
    cut = {k: v for k, v in official_mit("mit_b0").items() if not k.startswith("block2.1.")}
    torch.save(cut, path)
    with pytest.raises(ConfigError, match=r"no tensor for the encoder's block2\.1\.norm1\.weight \(64,\); give a "
                                          r"checkpoint of mit_b0$"):
        build_segmenter("segformer", "mit_b0", str(path), num_classes=4)
    torch.save(dict(official_mit("mit_b0"), **{"decode_head.conv_seg.weight": torch.zeros(19, 256, 1, 1)}), path)
    with pytest.raises(ConfigError, match=r"its decode_head\.conv_seg\.weight \(19, 256, 1, 1\) has no place in the "
                                          "encoder"):
        build_segmenter("daformer", "mit_b0", str(path), num_classes=4)
    for bad, says in [(tmp_path / "missing.pth", "not found; give the path of an existing weights file"),
                      (tmp_path / "run.pth", "cannot read"), (tmp_path / "meta.pth", "holds no state dict")]:
        if bad.name == "run.pth":  # a training checkpoint with pickled objects: refused by weights_only
            torch.save({"state_dict": official_mit("mit_b0"), "args": argparse.Namespace(lr=1)}, bad)
        if bad.name == "meta.pth":
            torch.save({"epoch": 3}, bad)
        with pytest.raises(ConfigError, match=says) as err:
            build_segmenter("daformer", "mit_b0", str(bad), num_classes=4)
        assert "\n" not in str(err.value) and str(err.value).startswith("encoder_weights: ")


def timm_state(name: str, seed: int = 0, **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    with torch.no_grad():  # nothing left at its (often constant) initial value
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_timm_vit_file(tmp_path, suffix):
    state = timm_state(DINO[3:])
    path = tmp_path / f"model{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save({"model": state}, path)
    segmenter = build_segmenter("upernet", DINO, str(path), num_classes=3, decoder_channels=16)
    assert_encoder_holds(segmenter.net.encoder, state, prefix="model.")


def dinov2_release(timm_weights: dict[str, torch.Tensor], registers: bool, seed: int = 1) -> dict[str, torch.Tensor]:
    """The same weights as Meta's DINOv2 release names them (dinov2/models/vision_transformer.py): ``cls_token``
    [1, 1, D], ``pos_embed`` [1, 1 + grid, D] whose first row belongs to the class token, ``mask_token`` [1, D],
    ``register_tokens`` [1, R, D] (reg variants; no position of their own), ``patch_embed.proj``,
    ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``. timm's reg
    models keep no class position (cls_token there = release cls_token + pos_embed[:, 0]), so the release file of
    timm's weights takes a class position of its own and subtracts it."""
    generator = torch.Generator().manual_seed(seed)
    release = {k: v for k, v in timm_weights.items() if k not in ("cls_token", "pos_embed", "reg_token")}
    dim = timm_weights["cls_token"].shape[-1]
    release["mask_token"] = torch.randn(1, dim, generator=generator)
    if registers:
        class_position = torch.randn(1, 1, dim, generator=generator)
        release["register_tokens"] = timm_weights["reg_token"]
        release["cls_token"] = timm_weights["cls_token"] - class_position
        release["pos_embed"] = torch.cat([class_position, timm_weights["pos_embed"]], dim=1)
    else:
        release["cls_token"], release["pos_embed"] = timm_weights["cls_token"], timm_weights["pos_embed"]
    return release


@pytest.mark.parametrize("encoder", [DINO, DINO_REG])
def test_dinov2_release_file(tmp_path, caplog, encoder):
    weights = timm_state(encoder[3:])
    release = dinov2_release(weights, registers=encoder == DINO_REG)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(release, path)
    with caplog.at_level(logging.INFO, logger="adapt.nets.pretrained"):
        segmenter = build_segmenter("dpt", encoder, str(path), num_classes=3, decoder_fusion_channels=16,
                                    decoder_intermediate_channels=(16, 16, 16, 16))
    own = segmenter.net.encoder.state_dict()
    assert {k for k in own} == {"model." + k for k in weights}
    for name, tensor in weights.items():  # the class token by the formula above (one float addition)
        assert torch.allclose(own["model." + name], tensor, atol=1e-6) if name == "cls_token" else \
            torch.equal(own["model." + name], tensor), name
    assert "DINOv2 release naming" in caplog.text and "mask_token dropped" in caplog.text


def test_dinov2_release_file_on_another_grid_is_resampled_as_timm_does(tmp_path):
    """img_size 224 (a 16x16 grid) from the release's 37x37: timm's pretrained loading resamples pos_embed
    (resample_abs_pos_embed, bicubic, antialiased, the class position kept); adapt does the same."""
    from timm.layers import resample_abs_pos_embed

    release = dinov2_release(timm_state(DINO[3:]), registers=False)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(release, path)
    encoder = build_segmenter("upernet", DINO, str(path), num_classes=3, decoder_channels=16, img_size=224).net.encoder
    expected = resample_abs_pos_embed(release["pos_embed"], new_size=(16, 16), old_size=(37, 37), num_prefix_tokens=1,
                                      interpolation="bicubic", antialias=True)
    assert encoder.model.pos_embed.shape == (1, 257, 384)
    assert torch.equal(encoder.model.pos_embed.detach(), expected)
    assert torch.equal(encoder.model.pos_embed.detach()[:, 0], release["pos_embed"][:, 0])
    reference = timm.create_model(DINO[3:], pretrained=True, img_size=224, pretrained_cfg_overlay={"file": str(path)})
    for name, tensor in reference.state_dict().items():  # timm's own loading of the same file
        assert torch.equal(encoder.state_dict()["model." + name], tensor), name


def test_vit_file_of_another_model_is_one_clear_line(tmp_path):
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(dinov2_release(timm_state(DINO[3:]), registers=False), path)
    with pytest.raises(ConfigError, match=r"patch_embed\.proj\.weight is \(384, 3, 14, 14\) in the file, "
                                          r"\(192, 3, 16, 16\) in the encoder"):
        build_segmenter("dpt", "tu-vit_tiny_patch16_224", str(path), num_classes=3)
    for weights in (dinov2_release(timm_state(DINO[3:]), registers=False), timm_state(DINO[3:])):
        torch.save(weights, path)  # the model without registers (release and timm naming) for the register model
        with pytest.raises(ConfigError) as err:
            build_segmenter("upernet", DINO_REG, str(path), num_classes=3, decoder_channels=16)
        assert str(err.value) == (f"encoder_weights: {path} does not fit {DINO_REG}: the file has no reg_token, the "
                                  f"encoder one; give a checkpoint of {DINO_REG}")
    torch.save(dinov2_release(timm_state(DINO_REG[3:]), registers=True), path)
    with pytest.raises(ConfigError, match=f"does not fit {DINO}: the file has a reg_token, the encoder none"):
        build_segmenter("upernet", DINO, str(path), num_classes=3, decoder_channels=16)


@pytest.mark.parametrize("encoder, stages", [("tu-resnet18", (0, 1, 2, 3, 4)), ("tu-convnext_atto", (0, 1, 2, 3))])
def test_timm_file_for_a_universal_encoder_loads_as_timm_loads_it(tmp_path, caplog, encoder, stages):
    """smp's TimmUniversalEncoder holds timm's features-only net (ConvNeXt's stages renamed stages_0 ...); the file
    (timm's naming, classifier included) fills it as timm's own features_only loading of the same file does."""
    state = timm_state(encoder[3:])
    path = tmp_path / "model.safetensors"
    save_file(state, path)
    with caplog.at_level(logging.INFO, logger="adapt.nets.pretrained"):
        own = build_segmenter("fpn", encoder, str(path), num_classes=3).net.encoder.state_dict()
    reference = timm.create_model(encoder[3:], features_only=True, pretrained=True, out_indices=stages,
                                  pretrained_cfg_overlay={"file": str(path)})
    assert set(own) == {"model." + k for k in reference.state_dict()}
    for name, tensor in reference.state_dict().items():
        assert torch.equal(own["model." + name], tensor), name
    assert ("fc.weight" if encoder == "tu-resnet18" else "head.fc.weight") in caplog.text


def test_segmentation_task_takes_an_encoder_file(tmp_path):
    from adapt.tasks import SegmentationTask

    state = official_mit("mit_b0", seed=3)
    path = tmp_path / "mit_b0.pth"
    torch.save(state, path)
    task = SegmentationTask(arch="daformer", encoder_name="mit_b0", encoder_weights=str(path), class_names=["a", "b"],
                            segmenter_kwargs={"decoder_channels": 32})
    assert_encoder_holds(task.segmenter.net.encoder, {k: v for k, v in state.items() if not k.startswith("head.")})
    assert task.hparams.encoder_weights == str(path)
