"""The demo's table: runs ``adapt demo`` into a fresh folder and prints source and target val mIoU of both runs and
their gap (markdown), with the demo's wall time on this machine; ``--output`` writes it to a result file under a
header (command, commit, date, machine) that README links to.

    python benchmarks/demo_table.py --output benchmarks/results/demo.md   # runs/demo_table, removed first
    python benchmarks/demo_table.py --no-run         # only print the table of the demo already in --runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from record import write_result

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
    parser.add_argument("--runs", default="runs/demo_table", help="the demo's folder (default: runs/demo_table)")
    parser.add_argument("--no-run", action="store_true", help="print the table of the demo already in --runs")
    parser.add_argument("--output", default=None, help="also write the table to this result file")
    args = parser.parse_args(argv)
    out = Path(args.runs)
    seconds = None
    if not args.no_run:
        shutil.rmtree(out, ignore_errors=True)  # a fresh run: a kept stage would not be this version's
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "adapt.cli", "demo", "--output", str(out)], check=True)
        seconds = time.perf_counter() - start
        print(f"\nadapt demo took {seconds:.0f} s")
    summary_path = out / "summary.json"
    if not summary_path.is_file():
        sys.exit(f"{summary_path} not found: run without --no-run first")
    table = markdown(json.loads(summary_path.read_text()))
    print(table)
    if args.output:
        note = ("`adapt demo` (the experiment demo/demo.yaml and the recipes it names): each run scored on both "
                "domains' held-back `val` split; mIoU in %"
                + (f"; `adapt demo` took {seconds:.0f} s" if seconds is not None else "") + ".")
        write_result(args.output, note + "\n\n" + table, None if argv is None else [__file__, *argv])
    return table


if __name__ == "__main__":
    main()
