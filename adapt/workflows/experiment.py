"""``adapt run EXPERIMENT``: the stages of a multi-stage experiment, each feeding the next.

An experiment file (EXPERIMENT: its path, or a shipped one's name such as ``camvid/benchmark``)::

    output: runs/demo/cycada              # everything goes here (``adapt run ... --output DIR`` overrides it)
    stages:
      - name: source_only                 # a fit stage: a recipe (a shipped name or a path) plus overrides
        fit: demo/source_only
        args: ["--data.init_args.root=${output}/data"]
      - name: translator
        fit: demo/translator
        args: ["--model.init_args.segmenter_checkpoint=${source_only}"]   # ${STAGE}: that stage's checkpoint
      - name: translated_target           # an evaluate stage (`adapt evaluate`'s options): a row of the summary
        evaluate: {checkpoint: "${source_only}", translator: "${translator}", root: "${output}/data/target",
                   split: val, protocol: slide, window: [512, 512], stride: [256, 256], examples: 4}
      - name: adabn                       # a tta stage (`adapt tta`'s options): its checkpoint is OUT/NAME/adapted.ckpt
        tta: {checkpoint: "${source_only}", root: "${output}/data/target", split: val, method: adabn}
      - name: fda                         # an fda stage (`adapt fda`'s options): its translator is OUT/NAME/fda.ckpt,
        fda: {source: "${output}/data/source", target: "${output}/data/target", beta: 0.01}   # as ${fda}

An evaluate, tta or fda stage takes the options of its verb, with their names, types and defaults (the runner sets
``output``, and the run's seed for tta and fda). Each stage writes ``OUT/NAME/`` (a fit stage runs ``adapt fit`` in a
process of its own, so ``--trainer.devices=N`` works as for ``adapt fit``; its checkpoint is
``OUT/NAME/checkpoints/last.ckpt``, its console output is also kept in ``OUT/NAME/stage.log``) and, once finished,
``OUT/NAME/stage.json``: its wall time in seconds and a fingerprint of all its result depends on
(``adapt.workflows.fingerprints``). A later run reuses a finished stage only when that fingerprint is the same and its
output file is unchanged; otherwise the stage, and so every stage that reads it, runs again, saying why, once its
old folder is moved to ``OUT/.stale/`` (nothing is deleted). ``--dry_run`` prints that plan and does nothing else.
A failed fit ends the run with the fit's exit code. The run ends with ``OUT/summary.json`` (evaluate stage name ->
its metrics.json content), ``OUT/cost.json`` (each stage's wall time, device hours, energy and emissions, read from
its own record, and their total: ``adapt.workflows.stages.experiment_cost``) and a table. Extra ``--key=value``
arguments after the file are passed to every fit stage (e.g. ``--trainer.max_epochs=1``; ``--cost=...``: to every
stage). ``--seeds 0 1 2`` runs the whole experiment once per seed (``OUT/seed_N``; each fit, tta and fda stage gets
that seed) and reports every metric as mean ± sample std with the per-seed values.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from adapt.catalogue import resolve
from adapt.cost import Cost, as_cost, cost_argument, cost_from_args
from adapt.errors import ConfigError, StageFailed
from adapt.provenance import git_commit
from adapt.recipe import load_yaml
from adapt.report import aggregate_seeds, comparison_table, plus_minus, write_json
from adapt.signals import forward_to_child
from adapt.workflows.fingerprints import (Decision, FileHashes, adapt_identity, decide, digest, fingerprint_parts,
                                          move_aside, read_record)
from adapt.workflows.stages import (OUTPUTS, check_experiment, check_output_key, cost_line, experiment_cost,
                                    references, run_workflow, seeds_cost, stage_cost, stage_kind, substitute)


def run_logged(command: list[str], log: Path) -> int:
    """Run ``command``, its stdout and stderr merged, shown here line by line and appended to ``log``. A SIGTERM
    to this process is passed on to it, and Ctrl-C is left to it (it finishes its step and writes a resumable
    checkpoint), so that stopping ``adapt run`` never kills a fit mid-write. Returns its exit code (128 + N when
    signal N killed it)."""
    with open(log, "ab") as sink:
        sink.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n".encode())
        sink.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))  # its lines as they come
        try:
            with forward_to_child(process):
                for line in iter(process.stdout.readline, b""):
                    sink.write(line)
                    sink.flush()
                    sys.stdout.write(line.decode(errors="replace"))
                    sys.stdout.flush()
                code = process.wait()
        finally:
            process.stdout.close()
    return 128 - code if code < 0 else code


def _fit(written: dict, stage_dir: Path, extra: list[str], where: str, resume: bool) -> dict:
    # its own process: under DDP Lightning re-launches that command (not `adapt run`) for every rank
    checkpoint, log = stage_dir / "checkpoints" / "last.ckpt", stage_dir / "stage.log"
    resume = resume and checkpoint.is_file()  # an earlier run with the same inputs stopped before the end
    command = ["fit", "--config", written["fit"], f"--trainer.default_root_dir={stage_dir}",
               f"--checkpoint.dirpath={stage_dir / 'checkpoints'}", *written["args"], *extra,
               *(["--resume"] if resume else [])]
    print(f"   adapt {shlex.join(command)}   (log: {log})", flush=True)
    code = run_logged([sys.executable, "-m", "adapt.cli", *command], log)
    if code == 143:
        kept = f"its resumable checkpoint is {checkpoint}" if checkpoint.is_file() else "it wrote no checkpoint"
        raise StageFailed(f"{where}: interrupted (exit code 143; its log: {log}); {kept}; run the same command "
                          "again to continue it (finished stages are kept)", 143)
    if code != 0:
        raise StageFailed(f"{where}: the fit failed with exit code {code}; its log: {log}; finished stages are "
                          "kept: fix the cause and run the same command again", code)
    if not checkpoint.is_file():
        raise ConfigError(f"{where}: the fit wrote no {checkpoint}; keep checkpoint.save_last: true")
    return {"checkpoint": str(checkpoint)}


class Runner:
    """One run of an experiment's stages into ``out`` (``dry_run``: only say what would run and why)."""

    def __init__(self, path: Path, out: Path, extra: list[str], dry_run: bool = False) -> None:
        self.path, self.out, self.extra, self.dry_run = path, out, extra, dry_run
        seeds = [a.split("=", 1)[1] for a in extra if a.startswith("--seed_everything=")]
        if seeds and not seeds[-1].isdigit():
            raise ConfigError(f"--seed_everything={seeds[-1]}: an experiment needs a fixed seed (a non-negative "
                              "integer) to be reproduced and reused; give one, or --seeds N ...")
        self.seed = int(seeds[-1]) if seeds else 0
        self.cost = cost_from_args(extra)  # --cost=...: fit stages read it themselves, the others get it here
        self.hashes, self.identity = FileHashes(), adapt_identity()
        self.commit = None if dry_run else git_commit()
        self.names = {"output": str(out)}  # ${NAME} -> a stage's checkpoint
        self.records: dict[str, dict] = {}  # stage -> its fingerprint and output's sha256
        self.ran: set[str] = set()  # stages that ran (would run) in this run

    def stage(self, stage: dict) -> dict | None:
        """Reuse, run or (dry run) plan one stage; returns its stage.json record (None for a dry run's "run")."""
        name, kind = stage["name"], stage_kind(stage)
        where, stage_dir = f"{self.path}: stage {name!r}", self.out / name
        output = stage_dir / OUTPUTS[kind]
        raw = {"fit": stage["fit"], "args": [str(a) for a in stage.get("args", [])]} if kind == "fit" else \
            {kind: stage[kind]}
        written, upstream = substitute(raw, self.names, where), [n for n in references(raw) if n != "output"]
        if kind != "evaluate":
            self.names[name] = str(output)
        parts = None
        if self.dry_run and any(n in self.ran for n in upstream):
            decision = Decision("run", f"upstream stage {next(n for n in upstream if n in self.ran)!r} runs")
        else:
            parts = fingerprint_parts(kind, written, [a for a in self.extra if not a.startswith("--cost")]
                                      if kind == "fit" else [], self.seed,
                                      {n: self.records[n] for n in upstream}, self.identity, self.hashes,
                                      set(self.names.values()))
            decision = decide(stage_dir, output, parts, [n for n in upstream if n in self.ran], self.hashes)
        if decision.action == "reuse":
            record = read_record(stage_dir / "stage.json")
            if kind == "evaluate":  # the numbers of the file whose hash was just checked, not stage.json's copy
                record["metrics"] = read_record(output)
            print(f"{'  ' if self.dry_run else '== '}{name}: {'reuse' if self.dry_run else 'reused'}: "
                  f"{decision.reason} ({stage_dir / 'stage.json'})", flush=True)
        elif self.dry_run:
            then = "; it would continue in place" if decision.action == "continue" else \
                f"; its folder would move to {self.out / '.stale'}" if decision.stale else ""
            print(f"  {name}: run: {decision.reason}{then}", flush=True)
        else:
            if decision.stale:
                moved = move_aside(stage_dir, decision.stale)
                print(f"== {name}: runs again: {decision.reason}; the earlier run is kept in {moved}", flush=True)
            else:
                print(f"== {name}: {'continues' if decision.action == 'continue' else 'runs'}: {decision.reason}",
                      flush=True)
            record = self.execute(kind, written, stage_dir, output, parts, where, decision.action == "continue")
        if decision.action != "reuse":
            self.ran.add(name)
            if self.dry_run:
                return None
        self.records[name] = {"fingerprint": record["fingerprint"], "output": record["output"]["sha256"]}
        return record

    def execute(self, kind: str, written: dict, stage_dir: Path, output: Path, parts: dict, where: str,
                resume: bool) -> dict:
        """Run a stage (started.json first, stage.json once finished); returns its record."""
        fingerprint = digest(parts)
        stage_dir.mkdir(parents=True, exist_ok=True)
        write_json(stage_dir / "started.json", {"fingerprint": fingerprint, "parts": parts, "git_commit": self.commit})
        start = time.perf_counter()
        result = (_fit(written, stage_dir, self.extra, where, resume) if kind == "fit" else
                  run_workflow(kind, written[kind], stage_dir, output, self.seed, where, resume, self.cost))
        record = {**result, "cost": stage_cost(stage_dir, kind, result),
                  "seconds": round(time.perf_counter() - start, 1),
                  "output": {"path": str(output), "sha256": self.hashes(output)}, "fingerprint": fingerprint,
                  "parts": parts, "git_commit": self.commit}  # the commit: for information, not in the fingerprint
        write_json(stage_dir / "stage.json", record)
        return record


def run_experiment(path: str | Path, output: str | Path | None = None, extra: list[str] | None = None,
                   dry_run: bool = False) -> dict:
    """Run (or finish) an experiment (a file, or a shipped one's name); returns the summary (evaluate stage name ->
    metrics). ``dry_run``: print which stages would be reused or run and why, change nothing; returns {stage:
    "reuse" or "run"}."""
    path = resolve(path, "EXPERIMENT")
    doc = load_yaml(path)
    stages = check_experiment(doc, path)
    out = Path(output or doc.get("output") or Path("runs") / path.stem)
    runner = Runner(path, out, [str(a) for a in extra or []], dry_run)
    if dry_run:
        print(f"== plan of {path} in {out} (a dry run: nothing runs, nothing moves)", flush=True)
    summary, records = {}, {}
    for stage in stages:
        records[stage["name"]] = record = runner.stage(stage)
        if dry_run:
            summary[stage["name"]] = "run" if stage["name"] in runner.ran else "reuse"
        elif "metrics" in record:
            summary[stage["name"]] = record["metrics"]
    if dry_run:
        return summary
    write_json(out / "summary.json", summary)
    write_json(out / "cost.json", cost := experiment_cost(out, stages, records))
    print("\n== summary (mIoU and pixel accuracy, %)")
    print(comparison_table({n: {"mIoU": m["miou"], "pixel acc.": m["pixel_accuracy"]} for n, m in summary.items()}))
    print(f"summary: {out / 'summary.json'}\nstages' {cost_line(cost['total'])} ({out / 'cost.json'})")
    return summary


def run_seeds(path: str | Path, seeds: list[int], output: str | Path | None = None,
              extra: list[str] | None = None, dry_run: bool = False) -> dict:
    """The experiment once per seed (``OUT/seed_N``, each fit stage with ``--seed_everything=N``, tta and fda
    stages with that seed), then ``OUT/summary.json``: stage -> metric -> mean, sample std and per-seed values
    (``adapt.report.aggregate_seeds``), and ``cost`` (``adapt.workflows.stages.seeds_cost``). ``dry_run``: each
    seed's plan only ({seed: plan})."""
    path = resolve(path, "EXPERIMENT")
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds: {seeds}; give distinct non-negative integers")
    out = Path(output or check_output_key(load_yaml(path), path) or Path("runs") / path.stem)
    per_seed = {}
    for seed in seeds:
        print(f"==== seed {seed}", flush=True)
        per_seed[seed] = run_experiment(path, out / f"seed_{seed}", [*(extra or []), f"--seed_everything={seed}"],
                                        dry_run)
    if dry_run:
        return per_seed
    summary = aggregate_seeds(per_seed)
    write_json(out / "summary.json", {"seeds": seeds, "stages": summary, "cost": (cost := seeds_cost(out, seeds))})
    print(f"\n== summary over seeds {', '.join(map(str, seeds))} (mean ± sample std, %)")
    rows = {stage: {"mIoU": plus_minus(m["miou"]), "pixel acc.": plus_minus(m["pixel_accuracy"]),
                    "mIoU per seed": " ".join(f"{v:.2f}" for v in m["miou"]["values"].values() if v is not None)}
            for stage, m in summary.items()}
    width = max(len(s) for s in [*rows, "stage"])
    print(f"{'stage':<{width}}  {'mIoU':>14}  {'pixel acc.':>14}  mIoU per seed")
    for stage, row in rows.items():
        print(f"{stage:<{width}}  {row['mIoU']:>14}  {row['pixel acc.']:>14}  {row['mIoU per seed']}")
    print(f"summary: {out / 'summary.json'}\nall seeds' stages' {cost_line(cost['total'])}")
    return summary


def run(experiment: str, output: str | None = None, seeds: list[int] | None = None, dry_run: bool = False,
        cost: Cost | None = Cost(), overrides: list[str] | None = None) -> dict:
    """Run the stages of an experiment file; a later run reuses the finished stages whose inputs are unchanged.
    Extra ``--key=value`` arguments (``--trainer.max_epochs=1``, ``--seed_everything=3``) go to every fit stage.

    Returns the summary (evaluate stage -> metrics; with ``seeds``: mean and std per stage).

    Args:
        experiment: an experiment file (output, stages), or a shipped one's name (camvid/benchmark, demo/demo).
        output: folder for everything the experiment writes (default: the file's ``output``).
        seeds: run the experiment once per seed (OUTPUT/seed_N) and report mean ± std over seeds: ``--seeds
            [0,1,2]`` (or ``--seeds 0 1 2``).
        dry_run: print which stages would be reused and which would run, and why; change nothing.
        cost: how every stage's cost is measured (``adapt.cost``): ``--cost.country_iso_code FRA``, or ``--cost
            null`` (wall time and device hours only); not part of the stages' fingerprints.
        overrides: ``--key=value`` arguments for every fit stage (on the command line: given as they are).
    """
    extra = [str(a) for a in overrides or []] + ([] if as_cost(cost) == Cost() else [cost_argument(as_cost(cost))])
    bad = [a for a in extra if not a.startswith("--")]
    if bad:
        raise ConfigError(f"adapt run: unexpected argument {bad[0]!r}; pass overrides as --key=value")
    if seeds is not None:
        if any(a.startswith("--seed_everything") for a in extra):
            raise ConfigError("adapt run: give either --seeds or --seed_everything, not both")
        return run_seeds(experiment, seeds, output, extra, dry_run)
    return run_experiment(experiment, output, extra, dry_run)


def demo(output: str | None = None, experiment: str = "demo/demo", max_epochs: int | None = None,
         overrides: list[str] | None = None) -> dict:
    """Train F source-only and with domain randomization on the embedded synthetic pair and compare them on both
    domains: ``adapt run demo/demo``, then source vs target mIoU and their gap per run. Works from any folder (the
    synthetic pair is written under ``output``); extra ``--key=value`` arguments go to both fits.

    Returns the experiment's summary.

    Args:
        output: everything the demo writes goes here (default: the experiment's ``output``, runs/demo).
        experiment: the demo's experiment: a shipped name or a file.
        max_epochs: override the recipes' trainer.max_epochs (1: a quick look).
        overrides: ``--key=value`` arguments for both fits (on the command line: given as they are).
    """
    extra = [*([] if max_epochs is None else [f"--trainer.max_epochs={max_epochs}"]), *map(str, overrides or [])]
    summary = run_experiment(experiment, output, extra)
    fits = dict.fromkeys(name.rpartition(".")[0] for name in summary if "." in name)
    rows = {fit: {"source val mIoU": summary[f"{fit}.source_val"]["miou"],
                  "target val mIoU": summary[f"{fit}.target_val"]["miou"],
                  "gap": summary[f"{fit}.source_val"]["miou"] - summary[f"{fit}.target_val"]["miou"]}
            for fit in fits if f"{fit}.source_val" in summary and f"{fit}.target_val" in summary}
    print("\n== demo: mIoU % over the 10 synthetic classes (held-back val splits of each domain)")
    print(comparison_table(rows))
    return summary
