"""``CheckpointSelection``: what the validation rounds of a fit say, written once it ends.

The label-free validators' checkpoint choice against the target-label choice (``adapt.report.selection_report``) and
each class's predicted share of the target frames per round beside its share of the source labels over the same
steps (``class_shares_report``), in ``LOG_DIR/selection.json`` and ``class_shares.png``; one warning line when a
class's predicted share collapses (``class_collapses``). ``adapt.callbacks.run_guard`` attaches it to every fit.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback

from adapt.errors import ConfigError
from adapt.plots import plot_class_shares
from adapt.report import (class_collapses, class_shares_report, collapse_line, selection_lines, selection_report,
                          validation_round, write_json)


class CheckpointSelection(Callback):
    """Each validation round's values (``adapt.report.validation_round``); after a fit with two or more rounds,
    ``LOG_DIR/selection.json`` (``selection_report``, ``class_shares_report``), printed, and ``class_shares.png``.
    One warning line (``adapt`` logger, process 0) when a class's predicted share on the target falls below
    ``collapse_fraction`` of its first-round share, once per class and run (``class_collapses``; 0: never)."""

    def __init__(self, collapse_fraction: float = 0.1) -> None:
        if not 0 <= collapse_fraction < 1:
            raise ConfigError(f"collapse_fraction: {collapse_fraction}; give a fraction in [0, 1) of a class's "
                              "first-round predicted share (0 turns the class-collapse warning off)")
        self.collapse_fraction, self.rounds = collapse_fraction, []  # rounds: validation_round's dicts
        self.source_counts: torch.Tensor | None = None  # int64 [C + 1]: labelled source pixels per class, ignore

    @property
    def state_key(self) -> str:
        return "CheckpointSelection"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        source = batch.get("source") if isinstance(batch, dict) else None
        classes = len(getattr(pl_module, "class_names", None) or ())  # TranslationTask: none
        if isinstance(source, dict) and "mask" in source and classes:  # index_add_: .bincount waits for the GPU
            mask = source["mask"].detach().reshape(-1).long().clamp(0, classes)  # ignore (255) -> the last bin
            counts = mask.new_zeros(classes + 1) if self.source_counts is None else self.source_counts
            self.source_counts = counts.index_add_(0, mask, torch.ones_like(mask))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        counts, self.source_counts = self.source_counts, None  # every process counted its own batches: sum them
        counts = None if counts is None else trainer.strategy.reduce(counts, reduce_op="sum")[:-1].tolist()
        row = validation_round(trainer.callback_metrics, trainer.current_epoch, trainer.global_step, counts)
        if "val/miou" in row and not math.isnan(row["val/miou"]):
            self.rounds.append(row)
            for name, entry in class_collapses(self.rounds, self.collapse_fraction).items():
                if entry["round"] == len(self.rounds) and trainer.is_global_zero:  # the round it fell: warn once
                    logging.getLogger(__name__).warning(collapse_line(name, entry, self.collapse_fraction))

    def on_fit_end(self, trainer, pl_module) -> None:
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a broadcast under DDP: every process asks
        if not trainer.is_global_zero or len(self.rounds) < 2:
            return
        report = selection_report(self.rounds)
        if any("share" in r for r in self.rounds):
            report["class_shares"] = class_shares_report(self.rounds, self.collapse_fraction)
            plot_class_shares(report["class_shares"], log_dir / "class_shares.png", loggers=trainer.loggers,
                              step=trainer.global_step)
        if report["by"] or "class_shares" in report:
            write_json(log_dir / "selection.json", report)
            print(selection_lines(report))

    def state_dict(self) -> dict:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.rounds = list(state.get("rounds", []))
