"""Sharding, per-sample augmentation seeds and the GPU switches, in one process (DDP itself: test_ddp.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_datamodule

from adapt.data.augment import build_augment
from adapt.data.folder import FolderDataset
from adapt.data.sampling import EvenSampler, ShardedSampler, sample_seed
from adapt.errors import ConfigError
from adapt.nets.segmenter import build_segmenter


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_together_read_the_single_process_batches(world_size):
    data, batch = list(range(50)), 4
    one = list(ShardedSampler(data, 1, 0, seed=5))
    shards = [list(ShardedSampler(data, world_size, r, seed=5)) for r in range(world_size)]
    steps = len(data) // (batch * world_size)
    assert steps == min(len(s) for s in shards) // batch
    for i in range(steps):
        joint = sorted(key for shard in shards for key in shard[i * batch:(i + 1) * batch])
        assert joint == sorted(one[i * batch * world_size:(i + 1) * batch * world_size])
    # each index carries the seed of (run seed, stream, epoch, index), whoever reads it
    assert all(seed == sample_seed(5, 0, 0, index) for shard in shards for index, seed in shard)


def test_orders_change_with_epoch_and_stream_not_with_instances():
    data = list(range(40))
    sampler = ShardedSampler(data, 1, 0, seed=0)
    first = list(sampler)
    assert first == list(ShardedSampler(data, 1, 0, seed=0))
    sampler.set_epoch(1)
    assert [i for i, _ in sampler] != [i for i, _ in first]
    assert [i for i, _ in ShardedSampler(data, 1, 0, seed=0, stream=1)] != [i for i, _ in first]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_even_sampler_reads_every_image_exactly_once(world_size):
    shards = [list(EvenSampler(list(range(25)), world_size, r)) for r in range(world_size)]
    assert sorted(i for shard in shards for i in shard) == list(range(25))
    assert [len(EvenSampler(list(range(25)), world_size, r)) for r in range(world_size)] == [len(s) for s in shards]


def test_a_sample_key_fixes_its_augmentation(tiny_pair):
    dataset = FolderDataset(tiny_pair / "source", "train", transform=build_augment("strong", (48, 48), None))
    a, b = dataset[(3, 11)], dataset[(3, 11)]
    dataset[(5, 12)]  # whatever was drawn in between
    c = dataset[(3, 11)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image"], c["image"])
    assert torch.equal(a["mask"], c["mask"])
    assert any(not torch.equal(a["image"], dataset[(3, seed)]["image"]) for seed in (1, 2, 3))


def test_segmentation_loads_only_source_batches(tiny_pair):
    from adapt.tasks import SegmentationTask, TranslationTask

    dm = tiny_datamodule(tiny_pair)
    dm.setup("fit")
    assert set(dm.train_dataloader()) == {"source", "target"}  # no trainer: both domains
    for task, domains in ((SegmentationTask(arch="fpn", class_names=dm.class_names), {"source"}),
                          (TranslationTask(ngf=8, n_blocks=1, ndf=8), {"source", "target"})):
        dm.trainer = SimpleNamespace(lightning_module=task, world_size=1, global_rank=0)
        assert set(dm.train_dataloader()) == domains


def test_segmenter_kwargs_reach_smp_and_unknown_ones_are_named():
    net = build_segmenter("fpn", "resnet18", None, num_classes=3, decoder_dropout=0.0)
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout2d)] == [0.0]
    with pytest.raises(ConfigError, match="segmenter_kwargs: fpn takes no decoder_dropot"):
        build_segmenter("fpn", "resnet18", None, num_classes=3, decoder_dropot=0.0)


def test_channels_last_changes_layout_not_results():
    from adapt.tasks import SegmentationTask

    torch.manual_seed(0)
    plain = SegmentationTask(arch="unet", class_names=["a", "b", "c"]).eval()
    torch.manual_seed(0)
    nhwc = SegmentationTask(arch="unet", class_names=["a", "b", "c"], channels_last=True).eval()
    conv = nhwc.segmenter.net.encoder.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(plain.segmenter(x), nhwc.segmenter(x), atol=1e-4)


def test_bf16_mixed_precision_trains_on_cpu(tiny_pair):
    import pytorch_lightning as pl

    from adapt.tasks import SegmentationTask

    dm = tiny_datamodule(tiny_pair)
    task = SegmentationTask(arch="fpn", class_names=dm.class_names)
    before = task.segmenter.net.encoder.conv1.weight.detach().clone()
    trainer = pl.Trainer(max_steps=2, precision="bf16-mixed", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, dm)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert task.segmenter.net.encoder.conv1.weight.dtype == torch.float32  # master weights stay float32
    assert not torch.equal(before, task.segmenter.net.encoder.conv1.weight.detach())


@pytest.mark.slow
def test_compiled_segmenter_trains_and_its_checkpoint_loads_uncompiled(tiny_pair, tmp_path):
    """``compile`` goes through torch.compile (the ``aot_eager`` backend: the same tracing as inductor, no C++
    build); the checkpoint keeps plain parameter names and loads into an uncompiled task."""
    import pytorch_lightning as pl

    from adapt.tasks import SegmentationTask

    dm = tiny_datamodule(tiny_pair)
    task = SegmentationTask(arch="fpn", class_names=dm.class_names, compile="aot_eager")
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, dm)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    trainer.save_checkpoint(tmp_path / "f.ckpt")
    plain = SegmentationTask.load_from_checkpoint(tmp_path / "f.ckpt", compile=False).eval()
    assert not any("_orig_mod" in k for k in plain.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(plain.segmenter(x), task.eval().segmenter(x), atol=1e-5)
