"""What a run records about the process that produced it, so that a result can be traced and continued.

- ``versions``: the installed versions of the libraries that shape a result (run.json, checkpoints, the
  fingerprints of ``adapt run``'s stages);
- ``git_commit``: the commit of the checkout adapt runs from (recorded beside results, for information);
- ``rng_state`` / ``set_rng_state``: this process's global random number generators (torch, CUDA, numpy,
  Python), as tensors and plain values, so that a resumed fit draws what an uninterrupted one would have
  (``adapt.callbacks.ResumableCheckpoints`` stores them in every checkpoint).
"""

from __future__ import annotations

import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

PACKAGES = ("adapt-seg", "torch", "torchvision", "pytorch-lightning", "segmentation-models-pytorch", "timm",
            "albumentations", "opencv-python-headless", "numpy")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when one is missing), and Python's."""
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
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    """Restore the global RNG states that ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])
