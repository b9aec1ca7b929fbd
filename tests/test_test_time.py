"""Test-time adaptation without labels: AdaBN and TENT (adapt/workflows/tta.py, `adapt tta`)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import adapt_main, tiny_checkpoint
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Subset

from adapt.checkpoints import load_segmenter
from adapt.data import FolderDataset
from adapt.errors import DataError
from adapt.workflows.tta import adabn, adapt_checkpoint, statistics_loader, tent


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
    segmenter = load_segmenter(segmenter_ckpt).segmenter
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    inputs = []
    hook = segmenter.net.encoder.bn1.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    adabn(segmenter, _loader(tiny_pair))  # 6 val images of 64x64: batches of 4 and 2
    hook.remove()
    buffers, _ = _bn_names(segmenter)
    changed = _changed(before, segmenter.state_dict())
    assert changed and changed <= buffers  # nothing but BatchNorm statistics moved
    assert not segmenter.training and all(not m.training for m in segmenter.modules())
    assert int(segmenter.net.encoder.bn1.num_batches_tracked) == len(inputs) == 2
    assert segmenter.net.encoder.bn1.momentum == 0.1  # restored after the pass


@pytest.mark.parametrize("images, batches", [(5, [3, 2]), (6, [4, 2])])
def test_adabn_weighs_every_image_the_same(segmenter_ckpt, tiny_pair, images, batches):
    """5 images at batch_size 4: near-equal batches 3 and 2; 6 images in a plain loader: 4 and 2. Either way the
    running mean is the mean of the images' channel means (not of the batches'), the running variance the
    image-weighted mean of the batch variances."""
    dataset = Subset(FolderDataset(tiny_pair / "target", "val", labels=False), range(images))
    loader = statistics_loader(dataset, 4) if images == 5 else DataLoader(dataset, batch_size=4)
    segmenter = load_segmenter(segmenter_ckpt).segmenter
    inputs = []
    hook = segmenter.net.encoder.bn1.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    adabn(segmenter, loader)
    hook.remove()
    assert [len(x) for x in inputs] == batches
    every_image = torch.cat(inputs).double()
    image_means = every_image.mean(dim=(2, 3))  # [N, C]
    bn = segmenter.net.encoder.bn1
    assert torch.allclose(bn.running_mean.double(), image_means.mean(0), atol=1e-5)
    batch_means = torch.stack([x.double().mean(dim=(0, 2, 3)) for x in inputs])
    assert not torch.allclose(batch_means.mean(0), image_means.mean(0), atol=1e-3)  # the old, per-batch weighting
    variances = torch.stack([len(x) * x.double().transpose(0, 1).flatten(1).var(1) for x in inputs]).sum(0) / images
    assert torch.allclose(bn.running_var.double(), variances, rtol=1e-4)


def test_statistics_batches_are_near_equal_and_never_single():
    sizes = {(n, b): [len(i) for i in statistics_loader(list(range(n)), b).batch_sampler]
             for n, b in [(31, 8), (5, 4), (16, 8), (2, 8), (3, 2), (7, 2)]}
    assert sizes == {(31, 8): [8, 8, 8, 7], (5, 4): [3, 2], (16, 8): [8, 8], (2, 8): [2], (3, 2): [3],
                     (7, 2): [3, 2, 2]}
    assert [b for batch in statistics_loader(list(range(31)), 8) for b in batch.tolist()] == list(range(31))


@pytest.fixture(scope="module")
def deeplab_ckpt(tiny_pair, tmp_path_factory):
    """A (barely trained) DeepLabV3+ F: its ASPP pooling BatchNorm sees one value per channel and image."""
    return tiny_checkpoint(tiny_pair, tmp_path_factory.mktemp("deeplab") / "f.ckpt", "deeplabv3plus")


@pytest.mark.parametrize("batch_size", [2, 4])
def test_adabn_on_one_image_more_than_a_batch_does_not_crash_deeplab(deeplab_ckpt, tiny_pair, tmp_path, capsys,
                                                                    batch_size):
    images = tmp_path / "camera" / "images"
    images.mkdir(parents=True)
    for path in sorted((tiny_pair / "target" / "images").iterdir())[:batch_size + 1]:
        shutil.copy(path, images)
    out = tmp_path / "f_adabn.ckpt"
    code, stdout, stderr = adapt_main(capsys, "tta", "--checkpoint", str(deeplab_ckpt), "--root", str(images.parent),
                                      "--method", "adabn", "--batch_size", str(batch_size), "--output", str(out))
    assert code == 0, stderr[-2000:]
    assert f"adabn: {batch_size + 1} target images" in stdout and out.is_file()


def test_adapt_tta_refuses_a_single_image(segmenter_ckpt, tiny_pair, tmp_path, capsys):
    images = tmp_path / "one" / "images"
    images.mkdir(parents=True)
    shutil.copy(sorted((tiny_pair / "target" / "images").iterdir())[0], images)
    code, _, stderr = adapt_main(capsys, "tta", "--checkpoint", str(segmenter_ckpt), "--root", str(images.parent),
                                 "--output", str(tmp_path / "x.ckpt"))
    assert code == 2 and "1 target image(s); adabn needs at least 2" in stderr and len(stderr.splitlines()) == 1
    assert not (tmp_path / "x.ckpt").exists()


def test_tent_batch_order_follows_the_seed(segmenter_ckpt, tiny_pair, tmp_path):
    def entropies(seed: int, name: str) -> list[float]:
        return adapt_checkpoint(str(segmenter_ckpt), str(tiny_pair / "target"), str(tmp_path / name), "tent",
                                split="val", steps=2, batch_size=2, seed=seed)["entropies"]

    first = entropies(0, "a.ckpt")
    assert entropies(0, "b.ckpt") == first  # same seed: same batches, same steps
    assert entropies(1, "c.ckpt")[0] != first[0]  # another seed: another first batch


def test_tent_trains_only_batchnorm_and_lowers_entropy(segmenter_ckpt, tiny_pair):
    segmenter = load_segmenter(segmenter_ckpt).segmenter
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
                              "--split", "val", "--output", str(tmp_path / "eval"), "--plots", "false")
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
