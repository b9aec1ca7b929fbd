"""Checkpoints that must never run code: the one way to read F (and T) from a file. Checkpoints are written
atomically through ``adapt.files.atomic_save``.

- ``load_checkpoint``: ``torch.load`` with ``weights_only`` (tensors and plain values only) unless the caller opts
  out; every failure is one line naming the option and the file.
- Checkpoint kinds: every checkpoint records its ``kind``: ``segmenter`` (F: SegmentationTask and the tasks built
  on it, and ``adapt tta``'s output), ``translator`` (TranslationTask's CycleGAN) or ``fourier`` (``adapt fda``).
  ``checkpoint_kind`` reads it (checkpoints of earlier versions, without one, are recognised in ``_legacy_kind``
  alone); ``require_kind`` turns a wrong one into the one-line ConfigError every verb and task gives.
- ``load_segmenter`` is the one way to load F: evaluate, predict, export, tta, the translation task's frozen F
  (CyCADA) and ``init_from`` call it. It returns a ``LoadedSegmenter``: F ready to predict (eval mode, CPU, its
  input normalisation inside, an HRDA-trained F multi-resolution: ``with_recorded_multi_resolution``) with the
  class names, ignore index and class subsets it was trained with. ``load_translator`` loads one generator of T.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from adapt.data.labels import IGNORE_INDEX
from adapt.errors import ConfigError
from adapt.nets.fourier import FourierTranslator
from adapt.nets.segmenter import Segmenter, build_segmenter
from adapt.nets.translator import ResnetGenerator

SEGMENTER_KIND, TRANSLATOR_KIND, FDA_KIND = "segmenter", "translator", "fourier"  # checkpoint["kind"]
KINDS = {SEGMENTER_KIND: "an F (segmenter)", TRANSLATOR_KIND: "a translator", FDA_KIND: "an FDA translator"}
DIRECTIONS = {"source-to-target": "g_st", "target-to-source": "g_ts"}
KIND_WORDS = {"segmenter": "an F (segmenter) checkpoint: adapt fit of a segmentation or self-training recipe",
              "translator": "a translator checkpoint: adapt fit of a translation recipe, or adapt fda"}


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
    """``segmenter``, ``translator``, ``fourier`` (``ckpt["kind"]``, which every checkpoint adapt writes records)
    or None (not a checkpoint of adapt's)."""
    if "kind" in ckpt:
        return ckpt["kind"] if ckpt["kind"] in KINDS else None
    return _legacy_kind(ckpt)


def _legacy_kind(ckpt: dict) -> str | None:
    """The legacy path: checkpoints written before the kind was recorded (adapt fit's and adapt tta's F, a
    TranslationTask's T; ``adapt fda`` always wrote it) are told apart by their hyperparameters' names, here only."""
    hparams = ckpt.get("hyper_parameters") or {}
    if "state_dict" in ckpt and "ngf" in hparams:
        return TRANSLATOR_KIND
    if "state_dict" in ckpt and "class_names" in hparams and "arch" in hparams:
        return SEGMENTER_KIND
    return None


def require_kind(ckpt: dict, kinds: tuple[str, ...], what: str, path: str | Path) -> str:
    """The kind of ``ckpt`` if it is one of ``kinds``, else a ConfigError saying what it is and what to give:
    ``--checkpoint: PATH is a translator checkpoint; give an F (segmenter) checkpoint: adapt fit of ...``."""
    kind = checkpoint_kind(ckpt)
    if kind in kinds:
        return kind
    found = KINDS.get(kind, "not a segmenter or translator")
    wanted = KIND_WORDS[SEGMENTER_KIND if SEGMENTER_KIND in kinds else TRANSLATOR_KIND]
    raise ConfigError(f"{what}: {path} is {found} checkpoint; give {wanted}")


def segmenter_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """F's weights in a segmenter checkpoint, without the ``segmenter.`` prefix (a self-training checkpoint's
    student; its teacher is left out)."""
    return {k[len("segmenter."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("segmenter.")}


def with_recorded_multi_resolution(segmenter: Segmenter, hparams: dict) -> Segmenter:
    """``segmenter`` with HRDA's multi-resolution part (``Segmenter.enable_multi_resolution``) when the checkpoint's
    hyperparameters record an HRDA-trained F, before its weights are loaded: SelfTrainingTask's ``multi_resolution``
    (a dict with ``context_scale`` and ``detail_crop``), or, in checkpoints written before it, ``hrda: true`` with
    ``hrda_context_scale`` and ``hrda_detail_crop``."""
    settings = hparams.get("multi_resolution")
    if settings is None and hparams.get("hrda"):
        settings = {"context_scale": hparams.get("hrda_context_scale", 0.5),
                    "detail_crop": hparams.get("hrda_detail_crop", (512, 512))}
    if settings is not None:
        segmenter.enable_multi_resolution(settings.get("context_scale", 0.5),
                                          tuple(settings.get("detail_crop", (512, 512))))
    return segmenter


@dataclass(frozen=True)
class LoadedSegmenter:
    """F of a segmenter checkpoint, ready to predict, with what its training recorded.

    Attributes:
        segmenter: float [B, 3, H, W] in [0, 1] -> logits float [B, C, H, W]; eval mode, on the CPU. It normalises
            its input itself (the encoder's mean / std saved with its weights), and an HRDA-trained F fuses context
            and detail windows itself; how an image of any size reaches it (full, resize, slide) is the caller's
            protocol (``adapt.inference``).
        class_names: the C class names in train-index order (logit channel c is class_names[c]).
        ignore_index: the label value its training ignored (255).
        class_subsets: the class-subset means its task reported (``adapt.metrics.CLASS_SUBSETS`` names), or None.
        channels_last: whether it trained in NHWC memory order (a speed setting; ``adapt evaluate`` keeps it).
        hyper_parameters: its task's hyperparameters as recorded (arch, encoder_name, ...).
        checkpoint: the file's dict as read (memory-mapped): ``adapt tta`` writes it back with new weights,
            ``adapt export`` hashes the recipe recorded in it.
        path: the file.
    """

    segmenter: Segmenter
    class_names: list[str]
    ignore_index: int
    class_subsets: list[str] | None
    channels_last: bool
    hyper_parameters: dict
    checkpoint: dict
    path: Path


def load_segmenter(path: str | Path, what: str = "--checkpoint", weights_only: bool = True) -> LoadedSegmenter:
    """The one way to load F: the F of a segmenter checkpoint (any task built on SegmentationTask, or ``adapt
    tta``'s output), built from its hyperparameters without fetching encoder weights. ``what``: the option that
    named the file (``--checkpoint``, ``model.init_args.init_from``, ...), in every error; a translator checkpoint
    is refused with ``require_kind``'s line. ``weights_only``: false runs the pickled code a checkpoint may hold."""
    path = Path(path)
    ckpt = load_checkpoint(path, what, weights_only, mmap=True)
    require_kind(ckpt, (SEGMENTER_KIND,), what, path)
    hp = dict(ckpt.get("hyper_parameters") or {})
    if not isinstance(ckpt.get("state_dict"), dict) or not {"arch", "class_names"} <= set(hp):
        raise ConfigError(f"{what}: {path} lacks F's weights or its hyperparameters arch and class_names; give the "
                          ".ckpt that adapt fit (or adapt tta) wrote")
    with torch.random.fork_rng(devices=[]):  # the random initial weights (replaced below) must not move the
        # caller's RNG: init_from inside a fit would otherwise change every later draw (dropout, drop path)
        segmenter = build_segmenter(hp["arch"], hp.get("encoder_name", "resnet18"), None,
                                    num_classes=len(hp["class_names"]), **(hp.get("segmenter_kwargs") or {}))
    with_recorded_multi_resolution(segmenter, hp).load_state_dict(segmenter_state(ckpt))
    subsets = hp.get("class_subsets")
    return LoadedSegmenter(segmenter.eval(), list(hp["class_names"]), int(hp.get("ignore_index", IGNORE_INDEX)),
                           None if subsets is None else list(subsets), bool(hp.get("channels_last", False)), hp,
                           ckpt, path)


def domain_name(root: str | Path) -> str:
    """What a translator checkpoint records of a domain: its folder's name (``day``, ``cityscapes``), which
    survives moving the data."""
    return Path(root).resolve().name


def load_translator(path: str | Path, direction: str, domains: dict[str, str] | None = None,
                    what: str = "--translator") -> ResnetGenerator | FourierTranslator:
    """One generator of a translator checkpoint (TranslationTask or ``adapt fda``), eval mode, CPU, frozen.

    Args:
        direction: ``source-to-target`` (g_st) or ``target-to-source`` (g_ts).
        domains: ``{"source" and / or "target": domain_name(root)}`` of the data T is used on: a ConfigError when
            the checkpoint records other domains (T used on the wrong data, or the wrong way round).
        what: the option that named the file, in every error (an F checkpoint is refused with ``require_kind``).
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"--direction: {direction!r}; choose {' or '.join(DIRECTIONS)}")
    ckpt = load_checkpoint(path, what)
    kind = require_kind(ckpt, (TRANSLATOR_KIND, FDA_KIND), what, path)
    recorded = ckpt.get("domains") or ckpt.get("record", {}).get("domains") or {}
    for side, name in (domains or {}).items():
        if recorded.get(side) and name and recorded[side] != name:
            raise ConfigError(f"{what}: {path}: a translator trained from {recorded.get('source')!r} to "
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

