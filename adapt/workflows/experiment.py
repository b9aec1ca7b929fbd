"""``adapt run EXPERIMENT.yaml``: the stages of a multi-stage experiment, each feeding the next.

An experiment file::

    out: runs/demo/cycada                 # everything goes here (--out or --trainer.default_root_dir override)
    stages:
      - name: source_only                 # a fit stage: a recipe plus command-line overrides
        fit: recipes/demo/source_only.yaml
        args: ["--data.init_args.root=${out}/data"]
      - name: translator
        fit: recipes/demo/translator.yaml
        args: ["--model.init_args.segmenter_checkpoint=${source_only}"]   # ${STAGE}: that stage's checkpoint
      - name: translated_target           # an evaluate stage: a row of the summary
        evaluate: {checkpoint: "${source_only}", translator: "${translator}", root: "${out}/data/target",
                   split: val}
      - name: adabn                       # a tta stage (``adapt tta``): its checkpoint is OUT/NAME/adapted.ckpt
        tta: {checkpoint: "${source_only}", root: "${out}/data/target", split: val, method: adabn}
      - name: fda                         # an fda stage (``adapt fda``): its translator is OUT/NAME/fda.ckpt,
        fda: {source: "${out}/data/source", target: "${out}/data/target", beta: 0.01}   # usable as ${fda}

Each stage writes ``OUT/NAME/`` (a fit stage runs ``adapt fit`` in a process of its own, so ``--trainer.devices=N``
works as for ``adapt fit``; its checkpoint is ``OUT/NAME/checkpoints/last.ckpt``) and, once finished,
``OUT/NAME/stage.json`` (with the stage's wall time in seconds); a re-run skips stages that have it. The run ends
with ``OUT/summary.json`` (evaluate stage name -> its metrics.json content) and a table. Extra ``--key=value`` arguments after the file are passed to every
fit stage (e.g. ``--trainer.max_epochs=1``). ``--seeds 0 1 2`` runs the whole experiment once per seed
(``OUT/seed_N``) and reports every metric as mean ± sample std with the per-seed values.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from adapt.errors import ConfigError
from adapt.recipe import load_yaml
from adapt.report import aggregate_seeds, comparison_table, plus_minus, write_json
from adapt.workflows.evaluate import evaluate
from adapt.workflows.fda import fda_checkpoint
from adapt.workflows.tta import adapt_checkpoint

STAGE_KEYS = {"fit": {"name", "fit", "args"}, "evaluate": {"name", "evaluate"}, "tta": {"name", "tta"},
              "fda": {"name", "fda"}}
# the workflow each kind of stage calls, and the arguments the stage itself fills in (not the experiment file):
# a stage's keys are the other arguments of that function, with the function's own defaults
WORKFLOWS = {"evaluate": (evaluate, {"out", "verbose"}), "tta": (adapt_checkpoint, {"output", "seed"}),
             "fda": (fda_checkpoint, {"output", "seed"})}  # TENT's batches, FDA's references: the run's seed


def stage_keys(kind: str) -> tuple[set[str], set[str]]:
    """(every key, the required keys) of an evaluate, tta or fda stage, read from its workflow's signature."""
    function, filled = WORKFLOWS[kind]
    params = {n: p for n, p in inspect.signature(function).parameters.items() if n not in filled}
    return set(params), {n for n, p in params.items() if p.default is inspect.Parameter.empty}


def _substitute(value: str, names: dict[str, str], where: str) -> str:
    def replace(match: re.Match) -> str:
        key = match.group(1)
        if key not in names:
            raise ConfigError(f"{where}: ${{{key}}} names no earlier stage (known: {', '.join(sorted(names))})")
        return names[key]

    return re.sub(r"\$\{([^}]+)\}", replace, value)


def check_experiment(doc: dict, path: Path) -> list[dict]:
    """The stages of an experiment file, checked: known keys, unique names, recipes that exist."""
    unknown = set(doc) - {"out", "stages"}
    if unknown or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise ConfigError(f"{path}: an experiment has 'out' and a non-empty 'stages' list"
                          f"{f' (unknown keys: {sorted(unknown)})' if unknown else ''}")
    seen = set()
    for i, stage in enumerate(doc["stages"]):
        kind = next((k for k in STAGE_KEYS if isinstance(stage, dict) and k in stage), None)
        if kind is None or "name" not in stage:
            raise ConfigError(f"{path}: stage {i + 1} needs a 'name' and one of 'fit', 'evaluate', 'tta' or 'fda'")
        name = str(stage["name"])
        if set(stage) - STAGE_KEYS[kind]:
            raise ConfigError(f"{path}: stage {name!r}: unknown keys {sorted(set(stage) - STAGE_KEYS[kind])}")
        if name in seen or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"{path}: stage name {name!r} must be unique and made of letters, digits, _ . -")
        seen.add(name)
        if kind == "fit" and not Path(stage["fit"]).is_file():
            raise ConfigError(f"{path}: stage {name!r}: recipe {stage['fit']} not found (paths are relative to "
                              "the folder you run from)")
        if kind in WORKFLOWS:
            spec = stage[kind] if isinstance(stage[kind], dict) else {}
            keys, required = stage_keys(kind)
            if set(spec) - keys or required - set(spec):
                raise ConfigError(f"{path}: stage {name!r}: {kind} takes {', '.join(sorted(required))} and "
                                  f"optionally {', '.join(sorted(keys - required))}"
                                  f"{f' (unknown: {sorted(set(spec) - keys)})' if set(spec) - keys else ''}")
    return doc["stages"]


def _run_forwarding_signals(command: list[str]) -> int:
    """Run ``command``; a SIGTERM to this process is passed on to it, and Ctrl-C is left to it (it finishes its
    step and writes a resumable checkpoint), so that stopping ``adapt run`` never kills a fit mid-write."""
    process = subprocess.Popen(command)
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum)),
                # a terminal's Ctrl-C reaches the fit itself (same process group): only keep this process waiting
                signal.SIGINT: signal.signal(signal.SIGINT, lambda signum, frame: None)}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _fit(stage: dict, stage_dir: Path, names: dict, where: str, extra: list[str] | None) -> dict:
    print(f"== {stage['name']}: fit {stage['fit']}", flush=True)
    args = [_substitute(str(a), names, where) for a in stage.get("args", [])]
    # its own process: under DDP Lightning re-launches that command (not `adapt run`) for every rank
    checkpoint = stage_dir / "checkpoints" / "last.ckpt"
    resume = ["--resume"] if checkpoint.is_file() else []  # an earlier run of this stage stopped before the end
    if resume:
        print(f"   continuing the unfinished fit of {checkpoint}", flush=True)
    command = [sys.executable, "-m", "adapt.cli", "fit", "--config", stage["fit"],
               f"--trainer.default_root_dir={stage_dir}", f"--checkpoint.dirpath={stage_dir / 'checkpoints'}",
               *args, *(extra or []), *resume]
    code = _run_forwarding_signals(command)
    if code == 143:
        raise ConfigError(f"{where}: interrupted; its resumable checkpoint is {checkpoint}; run the same command "
                          "again to continue it (finished stages are kept)")
    if code != 0:
        raise ConfigError(f"{where}: the fit failed (exit code {code}, its message is above); finished "
                          "stages are kept: fix the cause and run the same command again")
    if not checkpoint.is_file():
        raise ConfigError(f"{where}: the fit wrote no {checkpoint}; keep checkpoint.save_last: true")
    return {"checkpoint": str(checkpoint)}


def _workflow(kind: str, spec: dict, stage_dir: Path, name: str, seed: int) -> dict:
    """Run an evaluate, tta or fda stage: its workflow with the stage's keys (defaults: the function's own)."""
    print(f"== {name}: {kind} {', '.join(f'{k}={v}' for k, v in spec.items())}", flush=True)
    if kind == "evaluate":
        return {"metrics": evaluate(**spec, out=stage_dir)}
    output = stage_dir / ("adapted.ckpt" if kind == "tta" else "fda.ckpt")
    if not output.is_file():  # written atomically: present means complete (the stage stopped before stage.json)
        function, filled = WORKFLOWS[kind]
        function(**spec, output=output, **({"seed": seed} if "seed" in filled else {}))
    return {"checkpoint": str(output)}


def run_experiment(path: str | Path, out: str | Path | None = None, extra: list[str] | None = None) -> dict:
    """Run (or finish) an experiment; returns the summary (evaluate stage name -> metrics)."""
    path = Path(path)
    doc = load_yaml(path)
    stages = check_experiment(doc, path)
    out = Path(out or doc.get("out") or Path("runs") / path.stem)
    names: dict[str, str] = {"out": str(out)}
    summary: dict[str, dict] = {}
    for stage in stages:
        name = stage["name"]
        stage_dir, marker = out / name, out / name / "stage.json"
        where = f"{path}: stage {name!r}"
        if marker.is_file():
            record = json.loads(marker.read_text())
            print(f"== {name}: finished earlier, skipped ({marker})", flush=True)
        else:
            start = time.perf_counter()
            if "fit" in stage:
                record = _fit(stage, stage_dir, names, where, extra)
            else:
                kind = next(k for k in WORKFLOWS if k in stage)
                spec = {k: _substitute(str(v), names, where) if isinstance(v, str) else v
                        for k, v in stage[kind].items()}
                seed = next((int(a.split("=", 1)[1]) for a in extra or [] if a.startswith("--seed_everything=")), 0)
                record = _workflow(kind, spec, stage_dir, name, seed)
            record["seconds"] = round(time.perf_counter() - start, 1)
            write_json(marker, record)
        if "checkpoint" in record:
            names[name] = record["checkpoint"]
        if "metrics" in record:
            summary[name] = record["metrics"]
    write_json(out / "summary.json", summary)
    print("\n== summary (mIoU and pixel accuracy, %)")
    print(comparison_table({n: {"mIoU": m["miou"], "pixel acc.": m["pixel_accuracy"]} for n, m in summary.items()}))
    print(f"summary: {out / 'summary.json'}")
    return summary


def run_seeds(path: str | Path, seeds: list[int], out: str | Path | None = None,
              extra: list[str] | None = None) -> dict:
    """The experiment once per seed (``OUT/seed_N``, each fit stage with ``--seed_everything=N``), then
    ``OUT/summary.json``: stage -> metric -> mean, sample std and per-seed values (``adapt.report.aggregate_seeds``)."""
    path = Path(path)
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds: {seeds}; give distinct non-negative integers")
    out = Path(out or load_yaml(path).get("out") or Path("runs") / path.stem)
    per_seed = {}
    for seed in seeds:
        print(f"==== seed {seed}", flush=True)
        per_seed[seed] = run_experiment(path, out / f"seed_{seed}", [*(extra or []), f"--seed_everything={seed}"])
    summary = aggregate_seeds(per_seed)
    write_json(out / "summary.json", {"seeds": seeds, "stages": summary})
    print(f"\n== summary over seeds {', '.join(map(str, seeds))} (mean ± sample std, %)")
    rows = {stage: {"mIoU": plus_minus(m["miou"]), "pixel acc.": plus_minus(m["pixel_accuracy"]),
                    "mIoU per seed": " ".join(f"{v:.2f}" for v in m["miou"]["values"].values() if v is not None)}
            for stage, m in summary.items()}
    width = max(len(s) for s in [*rows, "stage"])
    print(f"{'stage':<{width}}  {'mIoU':>14}  {'pixel acc.':>14}  mIoU per seed")
    for stage, row in rows.items():
        print(f"{stage:<{width}}  {row['mIoU']:>14}  {row['pixel acc.']:>14}  {row['mIoU per seed']}")
    print(f"summary: {out / 'summary.json'}")
    return summary


def run_main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="adapt run", description="Run the stages of an experiment file.")
    parser.add_argument("experiment", help="experiment YAML (out, stages)")
    parser.add_argument("--out", "--trainer.default_root_dir", dest="out", default=None,
                        help="folder for everything the experiment writes (default: the file's 'out')")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="N",
                        help="run the experiment once per seed (OUT/seed_N) and report mean ± std over seeds")
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith("--")]
    if bad:
        raise ConfigError(f"adapt run: unexpected argument {bad[0]!r}; pass overrides as --key=value")
    if args.seeds is not None:
        if any(a.startswith("--seed_everything") for a in extra):
            raise ConfigError("adapt run: give either --seeds or --seed_everything, not both")
        return run_seeds(args.experiment, args.seeds, args.out, extra)
    return run_experiment(args.experiment, args.out, extra)


def demo_main(argv: list[str]) -> dict:
    """``adapt demo``: ``adapt run recipes/demo/demo.yaml``, then source vs target mIoU and their gap per run."""
    parser = argparse.ArgumentParser(prog="adapt demo", description="Train F source-only and with domain "
                                     "randomization on the embedded synthetic pair and compare them on both domains.")
    parser.add_argument("--out", default=None, help="everything the demo writes goes here (default: runs/demo)")
    parser.add_argument("--experiment", default="recipes/demo/demo.yaml", help="the demo's experiment file")
    parser.add_argument("--max_epochs", type=int, default=None, help="override the recipes' trainer.max_epochs")
    args = parser.parse_args(argv)
    if not Path(args.experiment).is_file():
        raise ConfigError(f"--experiment: {args.experiment} not found; run from the repository root or give "
                          "--experiment PATH")
    extra = [] if args.max_epochs is None else [f"--trainer.max_epochs={args.max_epochs}"]
    summary = run_experiment(args.experiment, args.out, extra)
    runs = dict.fromkeys(name.rpartition(".")[0] for name in summary if "." in name)
    rows = {run: {"source val mIoU": summary[f"{run}.source_val"]["miou"],
                  "target val mIoU": summary[f"{run}.target_val"]["miou"],
                  "gap": summary[f"{run}.source_val"]["miou"] - summary[f"{run}.target_val"]["miou"]}
            for run in runs if f"{run}.source_val" in summary and f"{run}.target_val" in summary}
    print("\n== demo: mIoU % over the 10 synthetic classes (held-back val splits of each domain)")
    print(comparison_table(rows))
    return summary
