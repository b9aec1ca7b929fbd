"""``adapt fda``: a training-free Fourier translator checkpoint (FDA, Yang & Soatto 2020): reference images of
both domains, usable wherever a translator checkpoint is (``adapt.checkpoints.load_translator``)."""

from __future__ import annotations

from pathlib import Path

from adapt.checkpoints import FDA_KIND, domain_name
from adapt.data.datasets import DatasetKind, open_dataset
from adapt.errors import ConfigError
from adapt.files import atomic_save
from adapt.nets.fourier import read_bank


def fda_checkpoint(output: str, source: str, target: str, beta: float = 0.01, count: int = 32,
                   size: tuple[int, int] = (256, 512), source_kind: DatasetKind = "folder",
                   target_kind: DatasetKind = "folder", source_split: str | None = None,
                   target_split: str | None = None, seed: int = 0) -> dict:
    """Write a Fourier domain adaptation translator checkpoint, usable wherever a translator checkpoint is.

    ``count`` images of each domain, drawn by ``seed`` and resized to ``size``, are its reference banks (labels
    are not read; no training). Returns its record (with ``output``).

    Args:
        output: the translator .ckpt (a new file).
        source: source-domain images (a dataset root of ``source_kind``; labels are not read).
        target: target-domain images (a dataset root of ``target_kind``).
        beta: the low-frequency share swapped (FDA's beta).
        count: reference images kept per domain.
        size: (height, width) the references are stored at (resized to each image when used).
        source_kind: layout of ``source`` (a kind of ``adapt.data.datasets.open_dataset``); ``target_kind`` likewise.
        source_split: split of ``source`` (see ``open_dataset``); ``target_split`` likewise.
        seed: which references are drawn.
    """
    output = Path(output)
    if output.exists():
        raise ConfigError(f"--output: {output} exists; give a new file name (nothing is overwritten)")
    if not 0 <= beta < 0.5 or count < 1 or min(size) < 8:
        raise ConfigError(f"--beta {beta} must lie in [0, 0.5), --count {count} be >= 1 and --size {size} >= 8 8")
    banks = {name: read_bank(open_dataset(kind, root, split, labels=False), count, size, seed)
             for name, kind, root, split in (("source", source_kind, source, source_split),
                                             ("target", target_kind, target, target_split))}
    record = {"beta": beta, "size": list(size), "seed": seed, "source_root": str(source),
              "target_root": str(target), "source_split": source_split, "target_split": target_split,
              "source_images": len(banks["source"]), "target_images": len(banks["target"]),
              "domains": {"source": domain_name(source), "target": domain_name(target)}, "output": str(output)}
    # source-to-target styles with the target bank, target-to-source with the source bank (load_translator)
    atomic_save({"kind": FDA_KIND, "beta": beta, "source_bank": banks["source"], "target_bank": banks["target"],
                 "record": record}, output)
    return record
