"""Files and folders that are never half-written: the one place adapt writes for keeps.

- ``atomic_write``: a file (checkpoint, metrics.json, run.json, a PNG report) goes to a temporary name in its
  folder, is flushed to disk, then renamed over ``path``: a crash leaves the old file or the new one, never half.
- ``atomic_save``: ``torch.save`` through ``atomic_write`` (checkpoints, FDA and TTA outputs).
- ``publish_folder``: a folder of many files (``adapt predict``'s PNGs, ``adapt translate``'s dataset) is built
  in an ``OUTPUT.partial-<pid>`` sibling and renamed to OUTPUT only once complete. A finished OUTPUT is never lost:
  it is replaced only when asked, only by a complete new one, and put back if the swap fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable

import torch

from adapt.errors import ConfigError


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


@contextmanager
def publish_folder(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder that appears at ``output`` only when complete.

    Yields ``OUTPUT.partial-<pid>``, an empty folder beside ``output`` (same file system, so the final rename is
    atomic). When the block ends normally the partial folder is renamed to ``output``; when it raises (an error,
    Ctrl-C) the partial folder is removed and ``output`` is untouched. An existing ``output`` is replaced only with
    ``overwrite``: it is moved aside, the new folder renamed in (the old one put back if that fails), and the old one
    removed last. Without ``overwrite`` an ``output`` that appeared meanwhile is a ConfigError, and is kept.
    Callers check ``output`` before their work starts, with their own message; this is the last guard.
    """
    output = Path(output).absolute()
    partial = output.with_name(f"{output.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
        old = _swap_in(partial, output, overwrite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if old is not None:  # the replaced output, removed only now that the new one is in place
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def _swap_in(partial: Path, output: Path, overwrite: bool) -> Path | None:
    """Rename ``partial`` to ``output``; an existing ``output`` (only with ``overwrite``) is moved aside first and
    put back if the rename fails. Returns where the old ``output`` now is (for the caller to remove), or None."""
    if not (output.exists() or output.is_symlink()):
        os.replace(partial, output)
        return None
    if not overwrite:
        raise ConfigError(f"--output: {output} was created while this command ran; it is kept and nothing was "
                          "written: give a new folder")
    old = output.with_name(f"{output.name}.old-{os.getpid()}")
    os.replace(output, old)
    try:
        os.replace(partial, output)
    except BaseException:
        os.replace(old, output)
        raise
    return old
