"""README's demo table, regenerated: runs ``adapt demo`` into a fresh folder and prints the table as README shows it
(markdown), with the demo's wall time on this machine.

    python benchmarks/demo_table.py                  # runs/demo_table (removed first: every stage runs)
    python benchmarks/demo_table.py --no-run         # only print the table of the demo already in --out
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

LABELS = {"source_only": "source_only", "randomized": "randomized (DR `strong`)"}


def markdown(summary: dict) -> str:
    """The table rows from ``summary.json``: mIoU of each run on both domains' val split and their gap."""
    lines = ["| run | source val mIoU | target val mIoU | source − target gap |", "|---|---|---|---|"]
    for run, label in LABELS.items():
        source, target = summary[f"{run}.source_val"]["miou"], summary[f"{run}.target_val"]["miou"]
        lines.append(f"| {label} | {source:.2f} | {target:.2f} | {source - target:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo_table", help="the demo's folder (default: runs/demo_table)")
    parser.add_argument("--no-run", action="store_true", help="print the table of the demo already in --out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not args.no_run:
        shutil.rmtree(out, ignore_errors=True)  # a fresh run: a kept stage would not be this version's
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "adapt.cli", "demo", "--out", str(out)], check=True)
        print(f"\nadapt demo took {time.perf_counter() - start:.0f} s")
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        sys.exit(f"{summary_path} not found: run without --no-run first")
    table = markdown(json.loads(summary_path.read_text()))
    print(table)
    return table


if __name__ == "__main__":
    main()
