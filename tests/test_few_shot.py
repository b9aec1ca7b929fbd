"""Few-shot target labels: N labelled target images, drawn by the run's seed, trained on with the source."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from adapt.data import DomainDataModule, FolderDataset
from adapt.errors import DataError
from adapt.tasks import SegmentationTask


def _dm(pair, **kwargs) -> DomainDataModule:
    return DomainDataModule(str(pair / "source"), str(pair / "target"), source_split="train", target_split="train",
                            val_split="val", batch_size=2, val_batch_size=2, **kwargs)


def test_few_shot_images_join_the_source_drawn_by_seed(tiny_pair, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    dm = _dm(tiny_pair, few_shot=5, few_shot_split="train", few_shot_repeat=2)
    dm.setup("fit")
    source = FolderDataset(tiny_pair / "source", "train")
    target = FolderDataset(tiny_pair / "target", "train")
    assert len(dm.source) == len(source) + 5 * 2
    assert len(set(dm.few_shot_names)) == 5 and set(dm.few_shot_names) <= set(target.names)
    assert not set(dm.few_shot_names) & set(dm.val.names)
    for k in range(10):  # the appended samples are the drawn target images with their labels
        sample = dm.source[(len(source) + k, 123)]
        reference = target[target.names.index(sample["name"])]
        assert sample["name"] == dm.few_shot_names[k % 5] and torch.equal(sample["mask"], reference["mask"])
    again = _dm(tiny_pair, few_shot=5, few_shot_split="train")
    again.setup("fit")
    assert again.few_shot_names == dm.few_shot_names  # same seed, same images
    monkeypatch.setenv("PL_GLOBAL_SEED", "4")
    other = _dm(tiny_pair, few_shot=5, few_shot_split="train")
    other.setup("fit")
    assert other.few_shot_names != dm.few_shot_names


def test_few_shot_refuses_evaluation_images_and_too_many(tiny_pair):
    with pytest.raises(DataError, match="data.few_shot_split 'val' shares"):
        _dm(tiny_pair, few_shot=2, few_shot_split="val").setup("fit")
    with pytest.raises(DataError, match="data.few_shot: 99 images asked"):
        _dm(tiny_pair, few_shot=99, few_shot_split="train").setup("fit")
    with pytest.raises(DataError, match="few_shot_repeat"):
        _dm(tiny_pair, few_shot=2, few_shot_repeat=0)


@pytest.mark.parametrize("limit_val_batches", [1.0, 2])
def test_few_shot_frames_may_be_validation_frames_only_when_validation_never_runs(tiny_pair, limit_val_batches):
    """A few-shot split sharing frames with the validation split: refused when the trainer validates, fine when it
    does not (limit_val_batches 0: a fit on all labelled development frames, none left to validate on)."""
    validating = _dm(tiny_pair, few_shot=3, few_shot_split="val")
    validating.trainer = SimpleNamespace(limit_val_batches=limit_val_batches)
    with pytest.raises(DataError, match="data.few_shot_split 'val' shares .* set trainer.limit_val_batches: 0"):
        validating.setup("fit")
    silent = _dm(tiny_pair, few_shot=3, few_shot_split="val", few_shot_repeat=2)
    silent.trainer = SimpleNamespace(limit_val_batches=0)
    silent.setup("fit")
    assert len(set(silent.few_shot_names)) == 3 and set(silent.few_shot_names) <= set(silent.val.names)
    assert len(silent.source) == len(FolderDataset(tiny_pair / "source", "train")) + 3 * 2


def test_a_few_shot_fit_runs(tiny_pair):
    dm = _dm(tiny_pair, few_shot=3, few_shot_split="train", few_shot_repeat=3)
    task = SegmentationTask(arch="fpn", class_names=dm.class_names)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, dm)
    assert trainer.global_step == (18 + 9) // 2  # 18 source + 3 x 3 target images, batch 2
