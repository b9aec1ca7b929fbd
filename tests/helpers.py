"""Callbacks the tests add to real `adapt fit` subprocesses (``--trainer.callbacks+=helpers.NAME``)."""

from __future__ import annotations

import math
import time
from pathlib import Path

from pytorch_lightning.callbacks import Callback


class Pace(Callback):
    """Slow training down (``seconds`` after every batch) and write the global step to ``marker``, so that a test
    can send a signal while a chosen step runs."""

    def __init__(self, marker: str, seconds: float = 1.0) -> None:
        self.marker, self.seconds = Path(marker), seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.marker.write_text(str(trainer.global_step))
        time.sleep(self.seconds)


class PoisonBatch(Callback):
    """Make the source images of the batch at global step ``step`` NaN (as a corrupt input would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            batch["source"]["image"].fill_(math.nan)
