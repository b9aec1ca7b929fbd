"""Never lose a run: the callbacks ``adapt fit`` attaches to every Trainer (``run_guard``), one job each.

- ``ResumableCheckpoints``: ``last.ckpt`` at every epoch end (Lightning 2.6's ModelCheckpoint writes it only
  together with a top-k save); on SIGTERM (SLURM preemption, ``kill``) or a first Ctrl-C the current step finishes,
  a resumable checkpoint is written to the run's ``checkpoints/last.ckpt`` and the command exits with code 143 (a
  second Ctrl-C aborts at once; how Lightning and adapt treat each signal: ``adapt.signals``). Every process's RNG
  state travels in the checkpoint, so ``adapt fit ... --resume`` ends, on the CPU in deterministic mode, with the
  weights of an uninterrupted run, bit for bit (tested).
- ``FiniteLoss``: a NaN or Inf loss stops the run before its backward pass (the weights stay finite), naming the
  step and the last good checkpoint.
- ``RunRecord``: ``LOG_DIR/run.json`` (process 0): ``status`` (``running``, then ``finished``, ``interrupted`` or
  ``failed``), ``seed``, package ``versions``, ``git_commit``, ``command``, ``resumed_from``, ``step``,
  ``skipped_images`` and, once stopped, ``checkpoint`` / ``error``; the same record in every checkpoint under
  ``checkpoint["adapt"]`` with the resolved recipe.
- ``CheckpointSelection`` (``adapt.selection``): the validators' checkpoint choice against the target-label choice
  and the predicted class shares per round (any logger) in ``LOG_DIR/selection.json``; a warning when a class's
  predicted share collapses.
- ``AtomicCheckpointIO``: Lightning's checkpoint I/O through ``adapt.files`` (atomic) and ``adapt.checkpoints``
  (``weights_only``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException

from adapt.checkpoints import load_checkpoint
from adapt.cost import Cost, fit_cost, fit_tracker
from adapt.errors import ConfigError, TrainingStopped
from adapt.files import atomic_save
from adapt.provenance import git_commit, rng_state, set_rng_state, versions
from adapt.report import write_json
from adapt.selection import CheckpointSelection
from adapt.signals import CtrlCAsSigterm


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic writes and ``weights_only`` loads (``--weights_only false`` on
    ``adapt fit`` opts out, for a checkpoint you trust)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path, "--ckpt_path", True if weights_only is None else weights_only)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

def last_checkpoint_path(trainer) -> Path:
    """Where the run's ``last.ckpt`` goes: the ModelCheckpoint folder, else ``LOG_DIR/checkpoints``."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        return Path(callback.dirpath) / "last.ckpt"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def find_resume_checkpoint(default_root_dir: str | Path, dirpath: str | None) -> Path:
    """The checkpoint ``--resume`` continues: ``DIRPATH/last.ckpt`` when the recipe fixes the checkpoint folder,
    else the newest ``lightning_logs/version_*/checkpoints/last.ckpt`` under ``default_root_dir``."""
    root = Path(default_root_dir)
    candidates = ([Path(dirpath) / "last.ckpt"] if dirpath else
                  sorted(root.glob("lightning_logs/version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime))
    found = [p for p in candidates if p.is_file()]
    if not found:
        where = Path(dirpath) if dirpath else root / "lightning_logs/version_*/checkpoints"
        raise ConfigError(f"--resume: no last.ckpt in {where}; start the run without --resume (or give the same "
                          "trainer.default_root_dir as the interrupted run)")
    return found[-1]


class ResumableCheckpoints(Callback):
    """``last.ckpt`` at every epoch end and on SIGTERM / a first Ctrl-C, with every process's RNG state."""

    def __init__(self) -> None:
        self.interrupting = False
        self._trainer = None
        self._rng_to_restore: list[dict] | None = None
        self.ctrl_c = CtrlCAsSigterm()  # the first Ctrl-C of the fit takes Lightning's SIGTERM path

    @property
    def state_key(self) -> str:
        return "RunGuard"  # the name of earlier versions' one callback: their checkpoints still resume

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_fit_start(self, trainer, pl_module) -> None:
        self.ctrl_c.install()

    def on_fit_end(self, trainer, pl_module) -> None:
        self.ctrl_c.restore()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # A second writer of last.ckpt beside ModelCheckpoint: at an epoch end Lightning 2.6's ModelCheckpoint
        # writes last.ckpt only right after a top-k save of the same step, and a top-k save is a second full
        # checkpoint file per run (epoch=E-step=S.ckpt); with adapt's save_top_k 0 it writes last.ckpt only at the
        # end of training (on_train_end, which also covers a max_steps stop mid-epoch). Same file, same folder.
        callback = trainer.checkpoint_callback
        if callback is None or not callback.save_last or trainer.sanity_checking:
            return
        trainer.save_checkpoint(last_checkpoint_path(trainer), weights_only=False)  # the full state (resumable)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.ctrl_c.restore()
        # SIGTERM only, at the step boundary where Lightning raises it; ModelCheckpoint(save_on_exception=True)
        # would save after any exception (a crash half way through a step; the NaN stop, whose last good
        # checkpoint must stay) and into a second file beside last.ckpt
        if isinstance(exception, SIGTERMException):
            path = last_checkpoint_path(trainer)
            self.interrupting = True
            trainer.save_checkpoint(path, weights_only=False)  # every process takes part; process 0 writes
            self.interrupting = False
            exception.checkpoint = str(path)  # read by RunRecord and by the CLI's exit message

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint.setdefault("adapt", {})["interrupted"] = self.interrupting

    def state_dict(self) -> dict:
        """Every process's RNG states (gathered: each process draws its own dropout masks)."""
        states = [rng_state()]
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            gathered = trainer.strategy.all_gather(states[0]["torch"])  # [W, n] bytes
            states = [dict(states[0], torch=row.cpu()) for row in gathered]
        return {"rng": states}

    def load_state_dict(self, state: dict) -> None:
        self._rng_to_restore = state.get("rng")

    def on_train_start(self, trainer, pl_module) -> None:
        """Resumed: restore the RNG states here, after model set-up and sanity check drew from them."""
        if self._rng_to_restore:
            states = self._rng_to_restore
            set_rng_state(states[trainer.global_rank] if len(states) == trainer.world_size else states[0])
            self._rng_to_restore = None


class FiniteLoss(Callback):
    """Stop before the update at the first loss that is NaN or Inf on any process (all processes stop together)."""

    def __init__(self) -> None:
        self.batch_idx = 0
        self.last_good: str | None = None  # the last checkpoint written at an epoch end, with its step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        path = last_checkpoint_path(trainer)
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.save_last and path.is_file():
            self.last_good = f"{path} (step {trainer.global_step})"

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # no process left waiting in a collective
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise TrainingStopped(
                f"the loss is {float(loss.detach()) if loss.numel() == 1 else 'not finite'} at step "
                f"{trainer.global_step} (epoch {trainer.current_epoch}, batch {self.batch_idx}); stopped before the "
                f"update; last good checkpoint: {self.last_good or 'none yet (no epoch finished)'}; lower "
                "model.init_args.lr, check the data, or find the operation with --trainer.detect_anomaly=true")


class RunRecord(Callback):
    """``run.json`` and ``checkpoint["adapt"]``; ``recipe``: the resolved recipe (YAML text), ``command``: the
    command line; ``seed``: the run's seed (``seed_everything``); ``cost``: ``adapt.cost``'s setting of run.json's
    ``cost``, from the fit's start to its end, failure or interrupt (None: wall time only; resumed: this session)."""

    def __init__(self, recipe: str | None = None, command: list[str] | None = None, seed: int | None = None,
                 resumed_from: str | None = None, cost: Cost | None = Cost()) -> None:
        self.recipe, self.command, self.seed, self.resumed_from = recipe, command, seed, resumed_from
        self.cost, self.tracker = cost, None
        self.record: dict = {}
        self.run_json: Path | None = None
        self.skipped_images = 0

    @property
    def state_key(self) -> str:
        return "RunRecord"

    def on_fit_start(self, trainer, pl_module) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every process asks
        self.record = {"status": "running", "seed": self.seed, "versions": versions(), "git_commit": git_commit(),
                       "command": self.command, "resumed_from": self.resumed_from, "started": now(),
                       "step": trainer.global_step, "skipped_images": self.skipped_images,
                       "processes": trainer.world_size}
        self.run_json = Path(log_dir) / "run.json" if log_dir else None
        self._write(trainer)
        self.tracker = fit_tracker(trainer, self.cost)

    def _write(self, trainer, **changes) -> None:
        self.record.update(changes)
        if trainer.is_global_zero and self.run_json is not None:
            write_json(self.run_json, self.record)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """Count samples skipped by ``data.bad_images: skip`` (each sample says how many it passed over)."""
        counts = [part["skipped"] for part in (batch.values() if isinstance(batch, dict) else [])
                  if isinstance(part, dict) and "skipped" in part]
        if counts:
            self.skipped_images += int(sum(int(c.sum()) for c in counts))
            pl_module.log("train/skipped_images", float(self.skipped_images), reduce_fx="sum", sync_dist=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        skipped = self.skipped_images
        if trainer.world_size > 1:
            skipped = int(trainer.strategy.reduce(torch.tensor(float(skipped)), reduce_op="sum"))
        self._write(trainer, status="finished", step=trainer.global_step, skipped_images=skipped, ended=now(),
                    cost=fit_cost(self.tracker, trainer, gather=True))
        if skipped:
            rank_zero_info(f"skipped {skipped} unreadable images (data.bad_images: skip; their names are in the "
                           "warnings above)")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        common = dict(step=trainer.global_step, skipped_images=self.skipped_images, ended=now(),
                      cost=fit_cost(self.tracker, trainer, gather=False))
        if isinstance(exception, SIGTERMException):
            self._write(trainer, status="interrupted", checkpoint=getattr(exception, "checkpoint", None), **common)
        else:
            self._write(trainer, status="failed", error=" ".join(str(exception).split()), **common)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint.setdefault("adapt", {}).update(
            recipe=self.recipe, class_names=list(getattr(pl_module, "class_names", []) or []),
            versions=self.record.get("versions") or versions(), git_commit=self.record.get("git_commit"),
            seed=self.seed, command=self.command)
        checkpoint["adapt"].setdefault("interrupted", False)

    def state_dict(self) -> dict:
        return {"skipped_images": self.skipped_images}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_images = int(state.get("skipped_images", 0))


def run_guard(recipe: str | None = None, command: list[str] | None = None, seed: int | None = None,
              cost: Cost | None = Cost(), collapse_fraction: float = 0.1) -> list[Callback]:
    """The callbacks of every ``adapt fit``, in the order they must run (``seed``: the run's ``seed_everything``;
    ``cost``: ``RunRecord``'s tracker; ``collapse_fraction``: ``CheckpointSelection``'s class-collapse warning)."""
    return [ResumableCheckpoints(), FiniteLoss(), RunRecord(recipe, command, seed, cost=cost),
            CheckpointSelection(collapse_fraction)]
