"""What every benchmark result file begins with: the command that wrote it, the commit, the date and the machine.

A result file (``--output FILE`` of a script in ``benchmarks/``) is the only place a measured table lives: README
and docs/ link to it and quote its headline figures. Its first lines say how to make it again::

    command: python benchmarks/demo_table.py --output benchmarks/results/demo.md
    commit:  1e78c61...            (git rev-parse HEAD; +dirty with uncommitted changes to tracked files)
    date:    2026-12-06 07:45 UTC
    machine: 2 CPU cores, torch 2.14.1 (2 threads), no GPU; load average 0.12

In a ``.md`` file the lines are a list, so that they render as lines.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from adapt.files import atomic_write
from adapt.provenance import git_commit


def machine() -> str:
    """CPU cores, torch's version and threads, the GPU's name, and the 1-minute load average when the file is
    written (above 0.5 or so, something else ran beside the measurement: timings are then not this script's alone)."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}; "
            f"load average {os.getloadavg()[0]:.2f}")


def header(path: str | Path, argv: list[str] | None = None) -> str:
    """The header lines of result file ``path``: command (``argv``, default this process's), commit, UTC date,
    machine; a markdown list for ``.md`` files, plain lines otherwise. Ends with a blank line."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(argv[0]) if argv and argv[0].endswith(".py") else (argv[0] if argv else "python")
    fields = {"command": "python " + shlex.join([script, *argv[1:]]),
              "commit": git_commit() or "unknown (not a git checkout)",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": machine()}
    if Path(path).suffix == ".md":
        return "\n".join(f"- {name}: `{value}`" for name, value in fields.items()) + "\n\n"
    return "\n".join(f"{name + ':':<9}{value}" for name, value in fields.items()) + "\n\n"


def write_result(path: str | Path, text: str, argv: list[str] | None = None) -> Path:
    """Write ``text`` to ``path`` under its header (atomically: a reader never sees half a file); prints where."""
    body = header(path, argv) + text.rstrip("\n") + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    written = atomic_write(path, lambda f: f.write(body.encode()))
    print(f"\nwritten to {path}")
    return written
