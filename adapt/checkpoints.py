"""Files that must never be half-written, and checkpoints that must never run code.

- ``atomic_write``: every file adapt writes for keeps (checkpoints, metrics.json, run.json, PNG reports) goes to a
  temporary name in the target folder, is flushed to disk, then renamed: a crash leaves the old file or the new
  one, never half of one.
- ``load_checkpoint``: ``torch.load`` with ``weights_only`` (tensors and plain values only) unless the caller opts
  out; every failure is one line naming the option and the file.
- Checkpoint kinds: ``checkpoint_kind`` tells an F checkpoint (``segmenter``: any task built on SegmentationTask),
  a CycleGAN translator (``translator``: TranslationTask) and an FDA translator (``fourier``: ``adapt fda``) apart;
  ``require_kind`` turns a wrong one into a ConfigError that says which file to give.
- ``load_segmenter`` and ``load_translator`` build F and T from their checkpoints (frozen, eval mode, CPU); an
  HRDA-trained F comes back multi-resolution (``with_recorded_multi_resolution``).
"""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch

from adapt.errors import ConfigError
from adapt.nets.fourier import FourierTranslator
from adapt.nets.segmenter import Segmenter, build_segmenter
from adapt.nets.translator import ResnetGenerator

PACKAGES = ("adapt-seg", "torch", "torchvision", "pytorch-lightning", "segmentation-models-pytorch", "timm",
            "albumentations", "opencv-python-headless", "numpy")
FDA_KIND = "fourier"  # the ``kind`` of an FDA translator checkpoint
DIRECTIONS = {"source-to-target": "g_st", "target-to-source": "g_ts"}
KIND_WORDS = {"segmenter": "an F (segmenter) checkpoint: adapt fit of a segmentation or self-training recipe",
              "translator": "a translator checkpoint: adapt fit of a translation recipe, or adapt fda"}


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a binary file at a temporary name beside ``path``, fsync, then rename it to ``path``
    (folders made as needed; the file gets the permissions of a plainly written one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through ``atomic_write``."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path, what: str = "--checkpoint", weights_only: bool = True,
                    mmap: bool = False) -> dict:
    """A checkpoint file as a dict, read with ``weights_only`` (a checkpoint cannot run code) unless the caller
    opts out; every failure is a one-line ConfigError naming ``what`` and the file."""
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


def checkpoint_kind(ckpt: dict) -> str | None:
    """``segmenter``, ``translator``, ``fourier`` or None (not a checkpoint of adapt's)."""
    if ckpt.get("kind") == FDA_KIND:
        return FDA_KIND
    hparams = ckpt.get("hyper_parameters") or {}
    if "state_dict" in ckpt and "ngf" in hparams:
        return "translator"
    if "state_dict" in ckpt and "class_names" in hparams and "arch" in hparams:
        return "segmenter"
    return None


def require_kind(ckpt: dict, kinds: tuple[str, ...], what: str, path: str | Path) -> str:
    """The kind of ``ckpt`` if it is one of ``kinds``, else a ConfigError saying what it is and what to give."""
    kind = checkpoint_kind(ckpt)
    if kind in kinds:
        return kind
    found = {"segmenter": "an F (segmenter)", "translator": "a translator", FDA_KIND: "an FDA translator",
             None: "not a segmenter or translator"}[kind]
    wanted = KIND_WORDS["segmenter" if "segmenter" in kinds else "translator"]
    raise ConfigError(f"{what}: {path} is {found} checkpoint; give {wanted}")


def segmenter_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """F's weights in a segmenter checkpoint, without the ``segmenter.`` prefix (a self-training checkpoint's
    student; its teacher is left out)."""
    return {k[len("segmenter."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("segmenter.")}


def with_recorded_multi_resolution(segmenter: Segmenter, hparams: dict) -> Segmenter:
    """``segmenter`` with HRDA's multi-resolution part (``Segmenter.enable_multi_resolution``) when the checkpoint's
    hyperparameters record an HRDA-trained F (SelfTrainingTask ``hrda: true``), before its weights are loaded."""
    if hparams.get("hrda"):
        segmenter.enable_multi_resolution(hparams.get("hrda_context_scale", 0.5),
                                          tuple(hparams.get("hrda_detail_crop", (512, 512))))
    return segmenter


def load_segmenter(path: str | Path, what: str = "--checkpoint", weights_only: bool = True
                   ) -> tuple[Segmenter, dict]:
    """F of a segmenter checkpoint, built from its hyperparameters without fetching encoder weights, in eval mode
    on the CPU; returns ``(segmenter, hyper_parameters)`` (``class_names`` among them)."""
    ckpt = load_checkpoint(path, what, weights_only, mmap=True)
    require_kind(ckpt, ("segmenter",), what, path)
    hp = ckpt["hyper_parameters"]
    segmenter = build_segmenter(hp["arch"], hp.get("encoder_name", "resnet18"), None,
                                num_classes=len(hp["class_names"]), **(hp.get("segmenter_kwargs") or {}))
    with_recorded_multi_resolution(segmenter, hp).load_state_dict(segmenter_state(ckpt))
    return segmenter.eval(), dict(hp)


def domain_name(root: str | Path) -> str:
    """What a translator checkpoint records of a domain: its folder's name (``day``, ``cityscapes``), which
    survives moving the data."""
    return Path(root).resolve().name


def load_translator(path: str | Path, direction: str,
                    domains: dict[str, str] | None = None) -> ResnetGenerator | FourierTranslator:
    """One generator of a translator checkpoint (TranslationTask or ``adapt fda``), eval mode, CPU, frozen.

    Args:
        direction: ``source-to-target`` (g_st) or ``target-to-source`` (g_ts).
        domains: ``{"source" and / or "target": domain_name(root)}`` of the data T is used on: a ConfigError when
            the checkpoint records other domains (T used on the wrong data, or the wrong way round).
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"--direction: {direction!r}; choose {' or '.join(DIRECTIONS)}")
    ckpt = load_checkpoint(path, "translator checkpoint")
    kind = require_kind(ckpt, ("translator", FDA_KIND), "translator checkpoint", path)
    recorded = ckpt.get("domains") or ckpt.get("record", {}).get("domains") or {}
    for side, name in (domains or {}).items():
        if recorded.get(side) and name and recorded[side] != name:
            raise ConfigError(f"translator checkpoint {path}: trained from {recorded.get('source')!r} to "
                              f"{recorded.get('target')!r}, but this {side} domain is {name!r}; use a translator "
                              "trained for these domains (and direction)")
    if kind == FDA_KIND:  # source-to-target styles with the target bank, target-to-source with the source bank
        bank = ckpt["target_bank"] if direction == "source-to-target" else ckpt["source_bank"]
        return FourierTranslator(bank, ckpt["beta"]).eval().requires_grad_(False)
    hparams = ckpt["hyper_parameters"]
    prefix = DIRECTIONS[direction] + "."
    generator = ResnetGenerator(hparams["ngf"], hparams["n_blocks"])
    generator.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    return generator.eval().requires_grad_(False)


def rng_state() -> dict:
    """This process's global RNG states, as tensors and plain values (readable with ``weights_only``)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])


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
