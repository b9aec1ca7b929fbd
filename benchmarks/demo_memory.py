"""Peak memory of a demo run: ``adapt fit`` on a demo recipe, in this process, into a temporary folder.

Reports the process's peak resident memory (``ru_maxrss``: Python, torch, the data, the model, the optimizer, the
activations; everything the run held at its largest) and, on a GPU, ``torch.cuda.max_memory_allocated``. The
recipe runs unchanged apart from its output and data folders; extra ``--key=value`` overrides are passed on.

    python benchmarks/demo_memory.py --output benchmarks/results/demo_memory.txt   # recipes/demo/source_only.yaml
    python benchmarks/demo_memory.py recipes/demo/randomized.yaml --trainer.accelerator=gpu
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import torch
from record import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default="recipes/demo/source_only.yaml")
    parser.add_argument("--output", default=None, help="also write the figures to this result file")
    args, overrides = parser.parse_known_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from adapt.cli import quiet_lightning, run_lightning

    quiet_lightning()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_lightning(["fit", "--config", args.recipe, f"--trainer.default_root_dir={tmp}/run",
                       f"--data.init_args.root={tmp}/data", "--trainer.enable_progress_bar=false", *overrides])
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    lines = [f"{args.recipe}: fit {seconds:.0f} s (writing the synthetic pair included); peak resident memory "
             f"{peak:.0f} MiB ({before:.0f} MiB after imports, before the fit)"]
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        lines.append(f"peak GPU memory allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB, "
                     f"reserved {torch.cuda.max_memory_reserved() / 2**20:.0f} MiB")
    print("\n" + "\n".join(lines))
    sys.stdout.flush()
    if args.output:
        write_result(args.output, "\n".join(lines))


if __name__ == "__main__":
    main()
