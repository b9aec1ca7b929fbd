"""Never lose a run: atomic checkpoints, a resumable checkpoint on SIGTERM or Ctrl-C, a stop at the first
non-finite loss, and the run's record (seed, versions, git commit, resolved recipe) beside it and in every checkpoint.

``adapt fit`` attaches ``RunGuard`` and ``AtomicCheckpointIO`` to every Trainer. What they do, in order of a run:

- ``LOG_DIR/run.json`` (written atomically, process 0): ``status`` (``running``, then ``finished``, ``interrupted``
  or ``failed``), ``seed``, package ``versions``, ``git_commit`` (when adapt runs from a git checkout), ``command``,
  ``resumed_from``, ``step``, ``skipped_images`` and, once stopped, ``checkpoint`` / ``error``.
- SIGTERM (SLURM preemption, ``kill``) or a first Ctrl-C: the current step finishes, then a resumable checkpoint is
  written to the run's ``checkpoints/last.ckpt`` and the command exits with code 143. A second Ctrl-C aborts at once.
  ``adapt fit ... --resume`` continues it: weights, optimizer, scheduler, step, every process's torch RNG and the
  position in the epoch (``DomainDataModule.state_dict``) are restored, so on the CPU in deterministic mode the
  resumed run ends with the weights of an uninterrupted one, bit for bit (tested).
- ``last.ckpt`` is written at every epoch end (with ``checkpoint.save_last``, the default), not only at the end.
- A loss that is NaN or Inf stops the run before its backward pass (the weights stay finite), naming the step; the
  checkpoint of the last finished epoch is left as it was.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException

from adapt.nets.segmenter import ConfigError

PACKAGES = ("adapt", "torch", "torchvision", "pytorch-lightning", "segmentation-models-pytorch", "timm",
            "albumentations", "opencv-python-headless", "numpy")


class TrainingStopped(RuntimeError):
    """A run stopped on purpose (non-finite loss); the message says where and what is left."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary name in the same folder, fsync, then rename: a crash leaves the old file or
    the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, what: str = "--checkpoint", weights_only: bool = True,
                    mmap: bool = False) -> dict:
    """A checkpoint file as a dict, read with ``weights_only`` (tensors and plain values only: a checkpoint cannot
    run code) unless the caller opts out; every failure is a one-line ConfigError naming ``what`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: {path} not found; give the .ckpt a fit wrote (e.g. .../checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=mmap)
    except pickle.UnpicklingError as err:
        if weights_only and "weights only" in str(err).lower():
            raise ConfigError(f"{what}: {path} holds Python objects besides tensors and plain values; load it with "
                              "--weights_only false only if you trust where it comes from") from None
        raise ConfigError(f"{what}: {path} is not a readable checkpoint (corrupt or truncated)") from None
    except Exception as err:
        raise ConfigError(f"{what}: {path} is not a readable checkpoint ({type(err).__name__}: corrupt, "
                          "truncated or not a .ckpt)") from None
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{what}: {path} is not a checkpoint of adapt (no dict inside)")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic writes and ``weights_only`` loads (Lightning's ``--weights_only
    false`` on ``adapt fit`` opts out, for a checkpoint you trust)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path, "--ckpt_path", True if weights_only is None else weights_only)


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when one is missing)."""
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_commit() -> str | None:
    """The commit of the checkout adapt runs from (``+dirty`` with uncommitted changes), or None."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def rng_state() -> dict:
    """This process's global RNG states, as tensors and plain values (readable with ``weights_only``)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
            "python": __import__("random").getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    __import__("random").setstate(state["python"])


def write_run_json(path: Path, record: dict) -> None:
    from adapt.report import write_json

    write_json(path, record)


class RunGuard(Callback):
    """The run's safety net (see the module docstring); ``recipe`` is the resolved recipe (YAML text) and
    ``command`` the command line, both kept in every checkpoint under ``checkpoint["adapt"]``."""

    def __init__(self, recipe: str | None = None, command: list[str] | None = None,
                 resumed_from: str | None = None) -> None:
        self.recipe, self.command, self.resumed_from = recipe, command, resumed_from
        self.record: dict = {}
        self.run_json: Path | None = None
        self.skipped_images = 0
        self.interrupting = False
        self._rng_to_restore: list[dict] | None = None
        self._sigint_pressed = False
        self._previous_sigint = None
        self._trainer = None
        self.last_good: str | None = None  # the last checkpoint written at an epoch end, with its step

    @property
    def state_key(self) -> str:
        return "RunGuard"

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    # -- the record -------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every process asks, here and only here
        seed = os.environ.get("PL_GLOBAL_SEED")
        self.record = {"status": "running", "seed": None if seed is None else int(seed), "versions": versions(),
                       "git_commit": git_commit(), "command": self.command, "resumed_from": self.resumed_from,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": trainer.global_step,
                       "skipped_images": self.skipped_images, "processes": trainer.world_size}
        self.run_json = Path(log_dir) / "run.json" if log_dir else None
        self._write(trainer)
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _write(self, trainer, **changes) -> None:
        self.record.update(changes)
        if trainer.is_global_zero and self.run_json is not None:
            write_run_json(self.run_json, self.record)

    def _on_sigint(self, signum, frame) -> None:
        """First Ctrl-C: as SIGTERM (finish the step, write a resumable checkpoint, exit). Second: abort now."""
        if self._sigint_pressed:
            raise KeyboardInterrupt
        self._sigint_pressed = True
        print("\nCtrl-C: finishing this step, then writing a resumable checkpoint (Ctrl-C again aborts without one)",
              file=sys.stderr, flush=True)
        handler = signal.getsignal(signal.SIGTERM)  # Lightning's: marks the run, tells DDP children
        if callable(handler):
            handler(signal.SIGTERM, frame)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore_sigint()
        self._write(trainer, status="finished", step=trainer.global_step, skipped_images=self._skipped(trainer),
                    ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if self.record["skipped_images"]:
            rank_zero_info(f"skipped {self.record['skipped_images']} unreadable images (data.bad_images: skip; "
                           "their names are in the warnings above)")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_sigint()
        if isinstance(exception, SIGTERMException):
            path = last_checkpoint_path(trainer)
            self.interrupting = True
            trainer.save_checkpoint(path)  # every process takes part; process 0 writes
            self.interrupting = False
            if trainer.checkpoint_callback is not None:
                trainer.checkpoint_callback.last_model_path = str(path)
            exception.checkpoint = str(path)
            self._write(trainer, status="interrupted", step=trainer.global_step, checkpoint=str(path),
                        skipped_images=self.skipped_images, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        else:
            self._write(trainer, status="failed", step=trainer.global_step, error=" ".join(str(exception).split()),
                        skipped_images=self.skipped_images, ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    # -- a resumable checkpoint at every epoch end -------------------------------------------------------------
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """``last.ckpt`` at every epoch end (Lightning 2.6's ModelCheckpoint writes it only with a top-k save, so
        ``save_top_k: 0`` or a monitor that did not improve would leave nothing to resume from a crash)."""
        callback = trainer.checkpoint_callback
        if callback is None or not callback.save_last or trainer.sanity_checking:
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        callback.last_model_path = str(path)  # ModelCheckpoint's own last.ckpt: it rewrites it, never last-v1.ckpt
        self.last_good = f"{path} (step {trainer.global_step})"

    # -- non-finite losses ---------------------------------------------------------------------------------------
    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # every process stops together (no process left waiting in a collective)
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            last = self.last_good
            raise TrainingStopped(
                f"the loss is {float(loss.detach()) if loss.numel() == 1 else 'not finite'} at step "
                f"{trainer.global_step} (epoch {trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx}"
                f"); stopped before the update; last good checkpoint: {last or 'none yet (no epoch finished)'}; "
                "lower model.init_args.lr, check the data, or find the operation with --trainer.detect_anomaly=true")

    # -- skipped images (data.bad_images: skip) -----------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        counts = [part["skipped"] for part in (batch.values() if isinstance(batch, dict) else [])
                  if isinstance(part, dict) and "skipped" in part]
        if counts:
            self.skipped_images += int(sum(int(c.sum()) for c in counts))
            pl_module.log("train/skipped_images", float(self.skipped_images), reduce_fx="sum", sync_dist=True)

    def _skipped(self, trainer) -> int:
        if trainer.world_size > 1:
            return int(trainer.strategy.reduce(torch.tensor(float(self.skipped_images)), reduce_op="sum"))
        return self.skipped_images

    # -- what a checkpoint carries ----------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["adapt"] = {"recipe": self.recipe, "class_names": list(getattr(pl_module, "class_names", []) or []),
                               "versions": self.record.get("versions") or versions(),
                               "git_commit": self.record.get("git_commit"), "seed": self.record.get("seed"),
                               "command": self.command, "interrupted": self.interrupting}

    def state_dict(self) -> dict:
        """Every process's RNG states (gathered: each process draws its own dropout masks) and the skip count."""
        states = [rng_state()]
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            gathered = trainer.strategy.all_gather(states[0]["torch"])  # [W, n] bytes
            states = [dict(states[0], torch=row.cpu()) for row in gathered]
        return {"rng": states, "skipped_images": self.skipped_images}

    def load_state_dict(self, state: dict) -> None:
        self._rng_to_restore = state.get("rng")
        self.skipped_images = int(state.get("skipped_images", 0))

    def on_train_start(self, trainer, pl_module) -> None:
        """Resumed: restore the RNG states here, after model set-up and sanity check drew from them."""
        if self._rng_to_restore:
            states = self._rng_to_restore
            own = states[trainer.global_rank] if len(states) == trainer.world_size else states[0]
            set_rng_state(own)
            self._rng_to_restore = None


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
