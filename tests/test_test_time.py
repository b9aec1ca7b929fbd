"""Test-time adaptation without labels: AdaBN and TENT (adapt/test_time.py, `adapt tta`)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import adapt_main
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from adapt.checkpoints import load_segmenter
from adapt.data import FolderDataset
from adapt.errors import DataError
from adapt.workflows.tta import adabn, tent


def _bn_names(segmenter) -> tuple[set[str], set[str]]:
    """(BatchNorm buffer names, BatchNorm affine parameter names) in ``segmenter.state_dict()``."""
    buffers, params = set(), set()
    for name, module in segmenter.named_modules():
        if isinstance(module, _BatchNorm):
            buffers |= {f"{name}.{b}" for b in ("running_mean", "running_var", "num_batches_tracked")}
            params |= {f"{name}.{p}" for p in ("weight", "bias")}
    return buffers, params


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def _loader(tiny_pair, batch_size=4):
    return DataLoader(FolderDataset(tiny_pair / "target", "val", labels=False), batch_size=batch_size)


def test_adabn_changes_only_batchnorm_buffers_to_the_target_statistics(segmenter_ckpt, tiny_pair):
    segmenter = load_segmenter(segmenter_ckpt)[0]
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    inputs = []
    hook = segmenter.net.encoder.bn1.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    adabn(segmenter, _loader(tiny_pair))  # 6 val images of 64x64: batches of 4 and 2
    hook.remove()
    buffers, _ = _bn_names(segmenter)
    changed = _changed(before, segmenter.state_dict())
    assert changed and changed <= buffers  # nothing but BatchNorm statistics moved
    assert not segmenter.training and all(not m.training for m in segmenter.modules())
    # momentum None: the running mean is the plain average of the batch means (one per batch)
    batch_means = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs])
    assert torch.allclose(segmenter.net.encoder.bn1.running_mean, batch_means.mean(0), atol=1e-6)
    assert int(segmenter.net.encoder.bn1.num_batches_tracked) == len(inputs) == 2
    assert segmenter.net.encoder.bn1.momentum == 0.1  # restored after the pass


def test_tent_trains_only_batchnorm_and_lowers_entropy(segmenter_ckpt, tiny_pair):
    segmenter = load_segmenter(segmenter_ckpt)[0]
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    torch.manual_seed(0)
    entropies = tent(segmenter, _loader(tiny_pair, batch_size=6), steps=12, lr=1e-2)
    buffers, params = _bn_names(segmenter)
    changed = _changed(before, segmenter.state_dict())
    assert changed & params and changed <= buffers | params
    assert len(entropies) == 12 and entropies[-1] < entropies[0]  # one fixed batch: its entropy goes down
    assert all(p.requires_grad for p in segmenter.parameters())  # flags restored


def test_adapt_tta_writes_an_evaluable_checkpoint(segmenter_ckpt, tiny_pair, tmp_path, capsys):
    out = tmp_path / "f_adabn.ckpt"
    code, stdout, stderr = adapt_main(capsys, "tta", "--checkpoint", str(segmenter_ckpt), "--root",
                                      str(tiny_pair / "target"), "--split", "train", "--output", str(out))
    assert code == 0, stderr
    assert "adabn: 18 target images" in stdout and out.is_file()
    ckpt = torch.load(out, map_location="cpu", weights_only=False)
    assert ckpt["test_time_adaptation"]["method"] == "adabn" and "optimizer_states" not in ckpt
    again = adapt_main(capsys, "tta", "--checkpoint", str(segmenter_ckpt), "--root", str(tiny_pair / "target"),
                       "--output", str(out))
    assert again[0] == 2 and "exists" in again[2]  # never overwrites
    code, _, err = adapt_main(capsys, "evaluate", "--checkpoint", str(out), "--root", str(tiny_pair / "target"),
                              "--split", "val", "--out", str(tmp_path / "eval"), "--plots", "false")
    assert code == 0, err[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert isinstance(metrics["miou"], float) and 0 <= metrics["miou"] <= 100
    defined = [v for v in metrics["per_class_iou"].values() if v is not None]
    assert defined and abs(metrics["miou"] - sum(defined) / len(defined)) < 1e-4  # macro mean of the classes
    assert metrics["num_images"] == len(FolderDataset(tiny_pair / "target", "val")) and metrics["split"] == "val"
    assert metrics["checkpoint"] == str(out)  # the adapted F was scored, not the original


@pytest.mark.parametrize("args, message", [(["--method", "tent", "--steps", "0"], "--steps"),
                                          (["--batch_size", "1"], "--batch_size")])
def test_adapt_tta_refuses_bad_settings(segmenter_ckpt, tiny_pair, tmp_path, capsys, args, message):
    code, _, stderr = adapt_main(capsys, "tta", "--checkpoint", str(segmenter_ckpt), "--root",
                                 str(tiny_pair / "target"), "--output", str(tmp_path / "x.ckpt"), *args)
    assert code == 2 and message in stderr and not (tmp_path / "x.ckpt").exists()


def test_unlabelled_images_need_no_labels_or_class_file(segmenter_ckpt, tiny_pair, tmp_path, capsys):
    """A folder of bare images (no labels/, no classes.yaml) is enough for `adapt tta` and as a training target."""
    import shutil

    from adapt.data import DomainDataModule

    images = tmp_path / "camera" / "images"
    shutil.copytree(tiny_pair / "target" / "images", images)
    out = tmp_path / "f_adabn.ckpt"
    code, stdout, stderr = adapt_main(capsys, "tta", "--checkpoint", str(segmenter_ckpt), "--root",
                                      str(images.parent), "--output", str(out))
    assert code == 0, stderr
    assert f"adabn: {len(list(images.iterdir()))} target images" in stdout and out.is_file()
    dm = DomainDataModule(source_root=str(tiny_pair / "source"), target_root=str(images.parent),
                          val_root=str(tiny_pair / "target"), val_split="val", batch_size=2)
    assert dm.class_names == list(FolderDataset(tiny_pair / "source").classes.names)
    # labelled evaluation still needs the class list
    with pytest.raises(DataError, match=r"classes\.yaml: class file not found; a folder dataset needs classes\.yaml"):
        FolderDataset(images.parent, labels=True)
