"""Run by test_ddp.py as its own process (Lightning's DDP re-launches this command for rank 1): a few steps of
SelfTrainingTask on 2 CPU processes; each process saves its student and teacher to OUT/rank_N.pt.

    python tests/ddp_self_training.py DATA_ROOT OUT [TEACHER_MODE]

TEACHER_MODE: ``train`` (the official teacher, the default) or ``eval`` (running statistics averaged by the EMA and
broadcast from process 0).
"""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from adapt.data import DomainDataModule
from adapt.tasks import SelfTrainingTask
from adapt.tasks.ingredients import Teacher


class SaveEachRank(pl.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer, task) -> None:
        torch.save({"student": task.segmenter.state_dict(), "teacher": task.teacher.state_dict()},
                   self.out / f"rank_{trainer.global_rank}.pt")


if __name__ == "__main__":
    data, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), (sys.argv[3:] or ["train"])[0]
    pl.seed_everything(0)
    dm = DomainDataModule(str(data / "source"), str(data / "target"), source_split="train", target_split="train",
                          val_split="val", batch_size=2)
    teacher = Teacher(ema_alpha=0.9, pseudo_threshold=0.5, mode=mode)
    task = SelfTrainingTask(arch="fpn", class_names=dm.class_names, teacher=teacher)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, limit_val_batches=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[SaveEachRank(out)])
    trainer.fit(task, dm)
