"""The CamVid day -> dusk table: every method, several seeds, dusk mIoU mean ± std, gap closed, wall time.

Runs ``adapt run recipes/camvid/benchmark.yaml --seeds ...`` (finished stages of an earlier, interrupted run are
kept and skipped), then prints one row per method: dusk-eval mIoU as mean ± sample std over the seeds with the
per-seed values, the share of the source-only -> oracle gap the method closes (from the means), and the method's
own wall time per seed (its stages' ``seconds``; rows that adapt the source-only F do not count that F's fit).

    python benchmarks/camvid_table.py                         # seeds 0 1 2, runs/camvid/benchmark
    python benchmarks/camvid_table.py --no-run                # only print the table of what has run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# row label -> (evaluate stage, stages whose wall time the row costs); F: FPN on EfficientNet-Lite0 from ImageNet
# unless the row says "random weights". Test-time rows adapt on the evaluation frames themselves (transductive).
ROWS = {
    "source only": ("eval_source_only", ["source_only"]),
    "domain randomization (strong)": ("eval_randomized", ["randomized"]),
    "CyCADA: F(g_ts(x_t))": ("eval_cycada_translated_dusk", ["translator"]),
    "CyCADA: F retrained on g_st(x_s)": ("eval_cycada_retrained", ["translator", "retrained_on_translated_day"]),
    "AdaBN (test time, transductive)": ("eval_adabn", ["adabn"]),
    "TENT (test time, transductive)": ("eval_tent", ["tent"]),
    "FDA: F trained on FDA-styled day (beta 0.04)": ("eval_fda", ["fda", "F_on_fda_day"]),
    "DR F + AdaBN on the 31 training dusk images": ("eval_randomized_adabn", ["randomized", "randomized_adabn"]),
    "source-only F + AdaBN on the 31 training dusk images": ("eval_source_only_adabn", ["source_only_adabn"]),
    "self-training, DACS-style (from the row above)": ("eval_self_training", ["self_training"]),
    "  + rare-class sampling, feature dist. (DAFormer)": ("eval_daformer", ["daformer"]),
    "  + masked image consistency (MIC)": ("eval_mic", ["mic"]),
    "  MIC, then AdaBN (test time, transductive)": ("eval_mic_adabn", ["mic", "mic_adabn"]),
    "  MIC, then TENT (test time, transductive)": ("eval_mic_tent", ["mic", "mic_tent"]),
    "few-shot: 5 labelled dusk frames": ("eval_few_shot", ["few_shot"]),
    "oracle: 31 labelled dusk frames (reference)": ("eval_oracle", ["oracle"]),
    "random weights: source only": ("eval_random_source_only", ["random_source_only"]),
    "random weights: domain randomization": ("eval_random_randomized", ["random_randomized"]),
}
SELF_TRAINING = ("self_training", "daformer", "mic")  # their validation rounds feed selection.json


def table(out: Path, seeds: list[int]) -> str:
    """The printed table, from ``out/seed_N/*/stage.json``."""
    import statistics

    def stage(seed: int, name: str) -> dict | None:
        path = out / f"seed_{seed}" / name / "stage.json"
        return json.loads(path.read_text()) if path.is_file() else None

    rows, means = [], {}
    for label, (evaluation, costs) in ROWS.items():
        values = [s["metrics"]["miou"] for seed in seeds if (s := stage(seed, evaluation))]
        seconds = [sum(stage(seed, c)["seconds"] for c in costs) for seed in seeds
                   if all(stage(seed, c) and "seconds" in stage(seed, c) for c in costs)]
        means[label] = statistics.mean(values) if values else None
        spread = f" ± {statistics.stdev(values):5.2f}" if len(values) > 1 else ""
        rows.append((label, values, spread, statistics.mean(seconds) / 60 if seconds else None))
    source, oracle = means["source only"], means["oracle: 31 labelled dusk frames (reference)"]
    lines = [f"{'method':<52} {'dusk mIoU (mean ± std)':>23}  {'gap closed':>10}  {'min/seed':>8}  per seed"]
    for label, values, spread, minutes in rows:
        mean = means[label]
        gap = (f"{100 * (mean - source) / (oracle - source):9.1f}%" if None not in (mean, source, oracle)
               and oracle != source else f"{'-':>10}")
        cell = f"{mean:6.2f}{spread}" if mean is not None else "-"
        lines.append(f"{label:<52} {cell:>23}  {gap}  {f'{minutes:.1f}' if minutes else '-':>8}  "
                     + " ".join(f"{v:.2f}" for v in values))
    return "\n".join(lines)


def selection_table(out: Path, seeds: list[int], stage: str = "self_training") -> str:
    """How far the checkpoint each validator chooses (over the stage's validation rounds) falls from the one dusk
    labels would choose (an oracle choice), from ``selection.json``: mean over seeds, per-seed values; and the best
    round, to show whether the run's curve collapses (last round far below its best)."""
    import statistics

    reports = {seed: json.loads(path.read_text()) for seed in seeds
               for path in sorted((out / f"seed_{seed}" / stage).rglob("selection.json"))[-1:]}
    if not reports:
        return f"(no selection.json under {out}/seed_*/{stage})"
    rows = {"dusk labels (oracle choice)": [r["label_choice"]["miou"] for r in reports.values()],
            "last round (what the table reports)": [r["last"]["miou"] for r in reports.values()]}
    for name in ("entropy", "im", "snd"):
        rows[f"validator: {name}"] = [r["by"][name]["miou"] for r in reports.values() if name in r["by"]]
    best = statistics.mean(rows["dusk labels (oracle choice)"])
    lines = [f"{stage}: checkpoint chosen over {next(iter(reports.values()))['rounds']} validation rounds, seeds "
             f"{' '.join(map(str, reports))}",
             f"{'chosen by':<38} {'dusk mIoU (mean)':>16}  {'below oracle choice':>19}  per seed"]
    for label, values in rows.items():
        mean = statistics.mean(values)
        lines.append(f"{label:<38} {mean:16.2f}  {best - mean:19.2f}  " + " ".join(f"{v:.2f}" for v in values))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/camvid/benchmark")
    parser.add_argument("--no-run", dest="run", action="store_false", help="print the table of what has run")
    args, extra = parser.parse_known_args()
    if args.run:
        command = [sys.executable, "-m", "adapt.cli", "run", "recipes/camvid/benchmark.yaml", "--out", args.out,
                   "--seeds", *map(str, args.seeds), *extra]
        subprocess.run(command, check=True)
    print(f"\nCamVid day -> dusk, 31 dusk evaluation frames, seeds {' '.join(map(str, args.seeds))}; "
          "mIoU in %, std = sample std over seeds")
    print(table(Path(args.out), args.seeds))
    for stage in SELF_TRAINING:
        print()
        print(selection_table(Path(args.out), args.seeds, stage))


if __name__ == "__main__":
    main()
