"""Any experiment's table: runs ``adapt run EXPERIMENT`` into a fresh folder, then writes each evaluate stage's
target mIoU and pixel accuracy (%) from ``summary.json``: one value per stage for one run; with ``--seeds``, the
mean ± sample std over seeds and the per-seed mIoUs. With the experiment's wall time on this machine and, per stage,
the seconds its ``stage.json`` records (fit, tta and fda stages). ``--output`` writes the table to a result file
under a header (command, commit, date, machine) that README and docs/ link to.

    python benchmarks/experiment_table.py recipes/demo/cycada.yaml --output benchmarks/results/demo_cycada.txt
    python benchmarks/experiment_table.py recipes/demo/self_training_ablation.yaml --seeds 0 1 2 \\
        --output benchmarks/results/demo_self_training_ablation.txt
    python benchmarks/experiment_table.py recipes/camvid/fine_tune.yaml --output benchmarks/results/camvid_fine_tune.txt
    python benchmarks/experiment_table.py recipes/demo/cycada.yaml --no-run    # the table of what already ran

Extra ``--key=value`` arguments go to every fit stage, as ``adapt run`` passes them.
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

from adapt.report import comparison_table, plus_minus


def stage_seconds(folder: Path) -> dict[str, float]:
    """Stage name -> the seconds its stage.json records (stages that ran a process: fit, tta, fda)."""
    found = {}
    for path in sorted(folder.glob("*/stage.json")):
        record = json.loads(path.read_text())
        if "seconds" in record:
            found[path.parent.name] = record["seconds"]
    return found


def one_run_table(summary: dict, folder: Path) -> str:
    """summary.json of one run (evaluate stage -> metrics) -> the table, and the stages' seconds."""
    rows = {stage: {"mIoU": m["miou"], "pixel acc.": m["pixel_accuracy"]} for stage, m in summary.items()}
    seconds = stage_seconds(folder)
    times = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    return comparison_table(rows, first="evaluate stage") + (f"\n\nstage wall times: {times}" if times else "")


def seeds_table(summary: dict) -> str:
    """summary.json over seeds ({"seeds", "stages": stage -> metric -> mean/std/values}) -> the table."""
    stages = summary["stages"]
    width = max(len(s) for s in [*stages, "evaluate stage"])
    lines = [f"{'evaluate stage':<{width}}  {'mIoU':>14}  {'pixel acc.':>14}  mIoU per seed "
             f"({' '.join(map(str, summary['seeds']))})"]
    for stage, m in stages.items():
        values = " ".join(f"{v:.2f}" if v is not None else "-" for v in m["miou"]["values"].values())
        lines.append(f"{stage:<{width}}  {plus_minus(m['miou']):>14}  {plus_minus(m['pixel_accuracy']):>14}  {values}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="the experiment file, e.g. recipes/demo/cycada.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="run it once per seed (adapt run --seeds)")
    parser.add_argument("--runs", default=None, help="the experiment's folder (default: runs/bench/NAME)")
    parser.add_argument("--no-run", dest="run", action="store_false", help="write the table of what already ran")
    parser.add_argument("--output", default=None, help="also write the table to this result file")
    args, extra = parser.parse_known_args()
    folder = Path(args.runs or Path("runs/bench") / Path(args.experiment).stem)
    seconds = None
    if args.run:
        shutil.rmtree(folder, ignore_errors=True)  # a fresh run: a reused stage would not be this version's
        start = time.perf_counter()
        seeds = ["--seeds", *map(str, args.seeds)] if args.seeds else []
        subprocess.run([sys.executable, "-m", "adapt.cli", "run", args.experiment, "--output", str(folder), *seeds,
                        *extra], check=True)
        seconds = time.perf_counter() - start
    path = folder / "summary.json"
    if not path.is_file():
        sys.exit(f"{path} not found: run without --no-run first")
    summary = json.loads(path.read_text())
    table = seeds_table(summary) if "stages" in summary and "seeds" in summary else one_run_table(summary, folder)
    took = f"; the whole experiment took {seconds / 60:.1f} min" if seconds is not None else ""
    text = f"adapt run {args.experiment}: evaluate stages, mIoU and pixel accuracy in %{took}\n\n{table}"
    print("\n" + text)
    if args.output:
        write_result(args.output, text)


if __name__ == "__main__":
    main()
