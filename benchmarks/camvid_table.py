"""The CamVid day -> dusk table: every method over several seeds, with 95 % intervals, "gap closed" against two
references, the paired comparisons the README relies on, and each self-training run's checkpoint choices.

Runs ``adapt run recipes/camvid/benchmark.yaml --seeds ...`` (stages whose fingerprint matches an earlier finished
run are reused), then prints, from the stages' ``stage.json`` (the evaluate stages' metrics with per-image counts):

- one row per method: test-frame mIoU as mean ± sample std over seeds, its 95 % percentile bootstrap interval
  (frames and seeds resampled, as ``adapt compare`` does), the per-seed values, the share of the source-only ->
  reference gap the mean closes for both references (the dusk-only oracle and the joint day + dusk reference),
  and the method's own wall time and energy per seed (its stages' ``seconds`` and the ``cost`` of their records,
  ``adapt.workflows.stages.stage_cost``; rows that adapt the source-only F do not count that F's fit);
- paired comparisons on the same frames and seeds (``adapt compare``'s ``compare_runs``): mean difference, its
  95 % interval, how many seeds agree;
- for each self-training run, the checkpoint its validators choose over its validation rounds (on the development
  frames) against the development-label choice and the last round.

    python benchmarks/camvid_table.py --output benchmarks/results/camvid_seeds_3_4_5.txt   # the confirmatory run
    python benchmarks/camvid_table.py --seeds 0 1 2        # the development record
    python benchmarks/camvid_table.py --no-run             # only print the tables of what has run
    python benchmarks/camvid_table.py --experiment benchmarks/camvid_self_training_rows.yaml \
        --runs runs/camvid/self_training_rows              # the self-training rows alone (about 25 min)

``--output FILE`` writes the printed tables to a result file under a header (command, commit, date, machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from record import write_result

from adapt.workflows.compare import compare_runs, miou_summary
from adapt.workflows.stages import stage_cost

# row label -> (evaluate stage, stages whose wall time the row costs); F: FPN on EfficientNet-Lite0 from ImageNet
# unless the row says "random weights". Test-time rows adapt on the test frames themselves (transductive).
ROWS = {
    "source only": ("eval_source_only", ["source_only"]),
    "domain randomization (strong)": ("eval_randomized", ["randomized"]),
    "CyCADA: F(g_ts(x_t))": ("eval_cycada_translated_dusk", ["translator"]),
    "CyCADA: F retrained on g_st(x_s)": ("eval_cycada_retrained", ["translator", "retrained_on_translated_day"]),
    "AdaBN (test time, transductive)": ("eval_adabn", ["adabn"]),
    "TENT (test time, transductive)": ("eval_tent", ["tent"]),
    "FDA: F trained on FDA-styled day (beta 0.04)": ("eval_fda", ["fda", "F_on_fda_day"]),
    "DR F + AdaBN on the 31 training dusk images": ("eval_randomized_adabn", ["randomized", "randomized_adabn"]),
    "source-only F + AdaBN on 31 training dusk images": ("eval_source_only_adabn", ["source_only_adabn"]),
    "self-training, DACS-style (from the row above)": ("eval_self_training", ["self_training"]),
    "  + rare-class sampling, feature dist. (DAFormer)": ("eval_daformer", ["daformer"]),
    "  + masked image consistency (MIC)": ("eval_mic", ["mic"]),
    "  MIC, then AdaBN (test time, transductive)": ("eval_mic_adabn", ["mic", "mic_adabn"]),
    "  MIC, then TENT (test time, transductive)": ("eval_mic_tent", ["mic", "mic_tent"]),
    "AdvEnt, output level (from the F + AdaBN row)": ("eval_advent", ["advent"]),
    "CyCADA, feature level (from the F + AdaBN row)": ("eval_feature_alignment", ["feature_alignment"]),
    "few-shot: 5 labelled dusk frames": ("eval_few_shot", ["few_shot"]),
    "oracle: 31 labelled dusk frames (reference)": ("eval_oracle", ["oracle"]),
    "joint: day + 31 labelled dusk frames (reference)": ("eval_joint_reference", ["joint_reference"]),
    "random weights: source only": ("eval_random_source_only", ["random_source_only"]),
    "random weights: domain randomization": ("eval_random_randomized", ["random_randomized"]),
}
SOURCE, ORACLE, JOINT = "eval_source_only", "eval_oracle", "eval_joint_reference"
# the comparisons the README's text relies on, fixed before the confirmatory run: (label, A, B) = A - B
COMPARISONS = [
    ("MIC then TENT - TENT (both transductive)", "eval_mic_tent", "eval_tent"),
    ("MIC - TENT (inductive vs transductive)", "eval_mic", "eval_tent"),
    ("MIC - DACS-style", "eval_mic", "eval_self_training"),
    ("DAFormer - DACS-style", "eval_daformer", "eval_self_training"),
    ("DACS-style - its start (source-only F + AdaBN)", "eval_self_training", "eval_source_only_adabn"),
    ("DAFormer - its start", "eval_daformer", "eval_source_only_adabn"),
    ("MIC - its start", "eval_mic", "eval_source_only_adabn"),
    ("MIC - domain randomization", "eval_mic", "eval_randomized"),
    ("AdvEnt - its start", "eval_advent", "eval_source_only_adabn"),
    ("CyCADA feature level - its start", "eval_feature_alignment", "eval_source_only_adabn"),
    ("DACS-style - AdvEnt", "eval_self_training", "eval_advent"),
    ("TENT - AdaBN (both transductive)", "eval_tent", "eval_adabn"),
    ("joint reference - oracle", JOINT, ORACLE),
]
SELF_TRAINING = ("self_training", "daformer", "mic")  # their validation rounds feed selection.json


def stage(out: Path, seed: int, name: str) -> dict | None:
    path = out / f"seed_{seed}" / name / "stage.json"
    return json.loads(path.read_text()) if path.is_file() else None


def runs(out: Path, seeds: list[int], name: str) -> list[dict] | None:
    """The metrics.json (with per-image counts) of an evaluate stage, one per seed, as ``adapt run`` checked them
    against their stage.json's hash; None unless every seed finished the stage."""
    paths = [out / f"seed_{seed}" / name / "metrics.json" for seed in seeds]
    if not all(path.is_file() and stage(out, seed, name) for seed, path in zip(seeds, paths)):
        return None
    return [json.loads(path.read_text()) for path in paths]


def watt_hours(out: Path, seed: int, names: list[str], records: list[dict | None]) -> float | None:
    """The energy (Wh) of one seed's stages ``names`` (their ``stage.json`` ``records``), from their cost records
    (a fit's run.json files); None when a stage has not finished or its records carry no energy (made before cost
    tracking, with ``cost: null``, or a codecarbon error)."""
    costs = [stage_cost(out / f"seed_{seed}" / name, "fit", record) if record else None
             for name, record in zip(names, records)]
    return 1000 * sum(c["energy_kwh"] for c in costs) if all(c and "energy_kwh" in c for c in costs) else None


def gap(mean: float | None, source: float | None, reference: float | None) -> str:
    if None in (mean, source, reference) or reference == source:
        return f"{'-':>8}"
    return f"{100 * (mean - source) / (reference - source):7.1f}%"


def table(out: Path, seeds: list[int]) -> str:
    """The table of methods, from ``out/seed_N/*/stage.json``."""
    rows, means = [], {}
    for label, (evaluation, costs) in ROWS.items():
        found = runs(out, seeds, evaluation)  # every seed, or the row stays empty
        values = [m["miou"] for m in found or []]
        records = [[stage(out, seed, c) for c in costs] for seed in seeds]  # each stage.json read once
        seconds = [sum(r["seconds"] for r in per_seed) for per_seed in records
                   if all(r and "seconds" in r for r in per_seed)]
        energy = [watt_hours(out, seed, costs, per_seed) for seed, per_seed in zip(seeds, records)]
        means[evaluation] = statistics.mean(values) if values else None
        interval = f"[{(m := miou_summary(found))['low']:5.2f}, {m['high']:5.2f}]" if found else "-"
        spread = f" ± {statistics.stdev(values):5.2f}" if len(values) > 1 else ""
        rows.append((label, evaluation, values, spread, interval, statistics.mean(seconds) / 60 if seconds else None,
                     statistics.mean(energy) if energy and None not in energy else None))
    lines = [f"{'method':<50} {'mIoU (mean ± std)':>17}  {'95 % interval':>14}  {'gap: oracle':>11}  "
             f"{'joint':>8}  {'min/seed':>8}  {'Wh/seed':>8}  per seed"]
    for label, evaluation, values, spread, interval, minutes, watts in rows:
        mean = means[evaluation]
        cell = f"{mean:5.2f}{spread}" if mean is not None else "-"
        lines.append(f"{label:<50} {cell:>17}  {interval:>14}  {gap(mean, means[SOURCE], means[ORACLE]):>11}  "
                     f"{gap(mean, means[SOURCE], means[JOINT])}  {f'{minutes:.1f}' if minutes else '-':>8}  "
                     f"{f'{watts:.3g}' if watts is not None else '-':>8}  " + " ".join(f"{v:.2f}" for v in values))
    return "\n".join(lines)


def comparisons(out: Path, seeds: list[int]) -> str:
    """The paired comparisons: A - B on the same frames, seeds paired; mean difference, 95 % interval, seeds."""
    lines = [f"{'paired comparison (A - B, mIoU points)':<50} {'difference':>10}  {'95 % interval':>16}  "
             "seeds A > B"]
    for label, a, b in COMPARISONS:
        found_a, found_b = runs(out, seeds, a), runs(out, seeds, b)
        if not (found_a and found_b):
            lines.append(f"{label:<50} {'-':>10}")
            continue
        d = compare_runs(found_a, found_b)["difference"]
        verdict = "" if d["low"] > 0 or d["high"] < 0 else "  (interval holds 0)"
        interval = f"[{d['low']:+6.2f}, {d['high']:+6.2f}]"
        lines.append(f"{label:<50} {d['mean']:+10.2f}  {interval:>16}  {d['a_better_seeds']} of {d['seeds']}{verdict}")
    return "\n".join(lines)


def selection_table(out: Path, seeds: list[int], name: str = "self_training") -> str:
    """How far the checkpoint each validator chooses (over the stage's validation rounds, scored on the
    development frames) falls from the one the development labels choose, from ``selection.json``: mean over
    seeds and per seed; and the last round, to show whether the curve falls after its best round."""
    reports = {seed: json.loads(path.read_text()) for seed in seeds
               for path in sorted((out / f"seed_{seed}" / name).rglob("selection.json"))[-1:]}
    if not reports:
        return f"(no selection.json under {out}/seed_*/{name})"
    rows = {"development labels (best round)": [r["label_choice"]["miou"] for r in reports.values()],
            "last round (the checkpoint kept)": [r["last"]["miou"] for r in reports.values()]}
    for validator in ("entropy", "im", "snd"):
        rows[f"validator: {validator}"] = [r["by"][validator]["miou"] for r in reports.values()
                                           if validator in r["by"]]
    best = statistics.mean(rows["development labels (best round)"])
    lines = [f"{name}: checkpoint chosen over {next(iter(reports.values()))['rounds']} validation rounds on the "
             f"development frames, seeds {' '.join(map(str, reports))}",
             f"{'chosen by':<38} {'dev mIoU (mean)':>15}  {'below best round':>16}  per seed"]
    for label, values in rows.items():
        mean = statistics.mean(values)
        lines.append(f"{label:<38} {mean:15.2f}  {best - mean:16.2f}  " + " ".join(f"{v:.2f}" for v in values))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5])
    parser.add_argument("--runs", default="runs/camvid/benchmark", help="the experiment's folder")
    parser.add_argument("--experiment", default="recipes/camvid/benchmark.yaml",
                        help="the experiment to run (benchmarks/camvid_self_training_rows.yaml: those rows alone)")
    parser.add_argument("--no-run", dest="run", action="store_false", help="print the tables of what has run")
    parser.add_argument("--output", default=None, help="also write the printed tables to this result file")
    args, extra = parser.parse_known_args()
    if args.run:
        command = [sys.executable, "-m", "adapt.cli", "run", args.experiment, "--output", args.runs,
                   "--seeds", *map(str, args.seeds), *extra]
        subprocess.run(command, check=True)
    out = Path(args.runs)
    parts = [f"CamVid day -> dusk, the 31 dusk test frames (dusk/splits/eval.txt), seeds "
             f"{' '.join(map(str, args.seeds))}; mIoU in %; std: sample std over seeds; interval: 95 % percentile "
             "bootstrap over frames and seeds; gap: share of the source-only -> reference gap closed (means); "
             "min/seed and Wh/seed: the row's own stages' wall time and energy per seed (mean; energy: codecarbon's, "
             "for the whole machine, in the stages' cost records; '-': a record without cost, made before cost "
             "tracking or with cost: null)",
             table(out, args.seeds), comparisons(out, args.seeds),
             *(selection_table(out, args.seeds, name) for name in SELF_TRAINING)]
    text = "\n\n".join(parts)
    print("\n" + text)
    if args.output:
        write_result(args.output, text)

if __name__ == "__main__":
    main()
