"""Fine-tuning: ``init_from`` (weights only, classes matched by name), a frozen encoder, a slower encoder."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny_datamodule

from adapt.errors import ConfigError
from adapt.tasks import SegmentationTask


def _segmenter_state(path) -> tuple[dict, list[str]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = {k[len("segmenter."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("segmenter.")}
    return state, list(ckpt["hyper_parameters"]["class_names"])


def test_init_from_keeps_shared_classes_by_name(segmenter_ckpt):
    """A renamed, reordered and extended class set: shared classes keep their classifier rows (at their new
    positions), new classes keep the fresh initialization, every other tensor is the checkpoint's."""
    old, old_names = _segmenter_state(segmenter_ckpt)
    new_names = [old_names[3], "puddle", old_names[0], old_names[7], "snow"]  # 3 shared (reordered), 2 new
    task = SegmentationTask(arch="fpn", class_names=new_names)
    fresh = {k: v.clone() for k, v in task.segmenter.state_dict().items()}
    match = task.init_from(segmenter_ckpt)
    assert match == {"shared": [old_names[3], old_names[0], old_names[7]], "new": ["puddle", "snow"],
                     "dropped": [n for n in old_names if n not in new_names]}
    now = task.segmenter.state_dict()
    head = ("net.segmentation_head.0.weight", "net.segmentation_head.0.bias")
    for key, value in now.items():
        if key not in head:
            assert torch.equal(value, old[key]), key
    for key in head:
        for new_row, name in enumerate(new_names):
            expected = old[key][old_names.index(name)] if name in old_names else fresh[key][new_row]
            assert torch.equal(now[key][new_row], expected), (key, name)


class _FirstWeights(pl.Callback):
    def on_train_start(self, trainer, task) -> None:
        self.conv1 = task.segmenter.net.encoder.conv1.weight.detach().clone()


def test_init_from_starts_a_fit_with_its_weights_but_a_fresh_optimizer(tiny_pair, segmenter_ckpt):
    old, names = _segmenter_state(segmenter_ckpt)
    dm = tiny_datamodule(tiny_pair)
    task = SegmentationTask(arch="fpn", class_names=dm.class_names, init_from=str(segmenter_ckpt))
    first = _FirstWeights()
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[first])
    trainer.fit(task, dm)
    assert torch.equal(first.conv1, old["net.encoder.conv1.weight"])  # the fit began from the checkpoint
    assert trainer.global_step == 1  # not the checkpoint's step + 1: nothing but weights was restored
    states = trainer.optimizers[0].state_dict()["state"]
    assert states and all(int(s["step"]) == 1 for s in states.values())  # Adam moments begin afresh
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 1


def test_frozen_encoder_keeps_weights_and_batchnorm_statistics(tiny_pair):
    dm = tiny_datamodule(tiny_pair)
    task = SegmentationTask(arch="fpn", class_names=dm.class_names, freeze_encoder=True)
    encoder = {k: v.clone() for k, v in task.segmenter.net.encoder.state_dict().items()}
    decoder = task.segmenter.net.decoder.state_dict()
    decoder = {k: v.clone() for k, v in decoder.items()}
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=1, val_check_interval=1)
    trainer.fit(task, dm)  # validation between the steps switches train/eval: the encoder must stay in eval
    for key, value in task.segmenter.net.encoder.state_dict().items():
        assert torch.equal(value, encoder[key]), key
    assert any(not torch.equal(v, decoder[k]) for k, v in task.segmenter.net.decoder.state_dict().items())
    assert trainer.optimizers[0].param_groups[1]["params"] == []


def test_encoder_learns_at_its_own_rate(tiny_pair):
    dm = tiny_datamodule(tiny_pair)
    task = SegmentationTask(arch="unet", class_names=dm.class_names, lr=1e-3, encoder_lr_factor=0.1)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, dm)
    groups = trainer.optimizers[0].param_groups
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-3, 1e-4])
    encoder = {id(p) for p in task.segmenter.net.encoder.parameters()}
    assert {id(p) for p in groups[1]["params"]} == encoder
    assert sum(len(g["params"]) for g in groups) == len(list(task.parameters()))


def test_init_from_refuses_what_does_not_fit(tmp_path, segmenter_ckpt):
    task = SegmentationTask(arch="unet", class_names=["a", "b"])
    with pytest.raises(ConfigError, match="init_from: .* does not fit this one"):
        task.init_from(segmenter_ckpt)  # an FPN checkpoint into a U-Net
    with pytest.raises(ConfigError, match="init_from: .*not found"):
        task.init_from(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"ngf": 8}}, tmp_path / "t.ckpt")
    with pytest.raises(ConfigError, match="t.ckpt is a translator checkpoint; give an F .segmenter. checkpoint"):
        task.init_from(tmp_path / "t.ckpt")
