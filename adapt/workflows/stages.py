"""The stages of an experiment (``adapt run``): their keys, read from the signatures of the verbs' functions (one
signature serves the command line and the experiment file), checked before anything runs; ``${NAME}`` references;
running an evaluate, tta or fda stage; what each stage cost (``adapt.cost``'s records) and the experiment's total.
Whether a finished stage may be reused is ``adapt.workflows.fingerprints``' question.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable

from jsonargparse import ArgumentError, ArgumentParser

from adapt.catalogue import resolve
from adapt.cost import Cost, Tracker, as_cost
from adapt.errors import ConfigError, DataError
from adapt.inference import torch_device
from adapt.workflows.evaluate import evaluate_command
from adapt.workflows.fda import fda_checkpoint
from adapt.workflows.fingerprints import read_record
from adapt.workflows.tta import adapt_checkpoint

# the workflow each kind of stage calls (the function behind its `adapt` verb, so a stage takes that verb's option
# names and types), and the arguments the runner fills in itself: the stage folder, and the run's seed (TENT's
# batches, FDA's references)
WORKFLOWS: dict[str, tuple[Callable, set[str]]] = {
    "evaluate": (evaluate_command, {"output"}), "tta": (adapt_checkpoint, {"output", "seed"}),
    "fda": (fda_checkpoint, {"output", "seed"})}
OUTPUTS = {"fit": "checkpoints/last.ckpt", "tta": "adapted.ckpt", "fda": "fda.ckpt", "evaluate": "metrics.json"}
REFERENCE = re.compile(r"\$\{([^}]+)\}")
# old option names -> the dialect's (README "Verbs"): still read, with a one-line warning, for one release; the verbs
# (adapt.commands.run_verb) and the experiment stages' keys (check_spec) both read this table
DEPRECATED = {"out": "output", "device": "accelerator", "input_root": "input", "output_root": "output"}
KINDS = {"fit": {"name", "fit", "args"}, "evaluate": {"name", "evaluate"}, "tta": {"name", "tta"},
         "fda": {"name", "fda"}}


_WARNED: set[str] = set()


def deprecation(prog: str, old: str, new: str) -> None:
    """The warning line of a deprecated option spelling, on stderr (once per process for each ``prog``)."""
    line = f"{prog}: --{old} is deprecated; use --{new}"
    if line not in _WARNED:
        _WARNED.add(line)
        print(line, file=sys.stderr)


def signature_parser(function: Callable, prog: str | None = None, positional: bool = False,
                     skip: set[str] | None = None) -> ArgumentParser:
    """A jsonargparse parser of ``function``'s typed signature (less ``skip``), its description the docstring's
    first paragraph; errors raise ``ArgumentError`` instead of exiting. The ``adapt`` verbs and the experiment
    stages read their arguments with it."""
    summary = (function.__doc__ or "").strip().split("\n\n")[0]
    parser = ArgumentParser(prog=prog, description=summary, exit_on_error=False)
    parser.add_function_arguments(function, as_group=False, as_positional=positional, skip=skip)
    return parser


@functools.lru_cache(maxsize=None)
def _stage_parser(kind: str) -> ArgumentParser:
    function, filled = WORKFLOWS[kind]
    return signature_parser(function, skip=filled)


def check_spec(kind: str, spec: Any, where: str) -> dict:
    """The keys of an evaluate, tta or fda stage, checked and converted like the verb's options (jsonargparse, from
    the workflow's signature; defaults filled in). ConfigError (one line, naming ``where`` and the key) otherwise.
    Unknown and missing keys are found from the signature, a value of the wrong type by parsing each key alone:
    jsonargparse's errors carry their key only inside the message text."""
    function, filled = WORKFLOWS[kind]
    params = {n: p for n, p in inspect.signature(function).parameters.items() if n not in filled}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: '{kind}:' takes a mapping of `adapt {kind}`'s options ({', '.join(params)})")
    spec = dict(spec)
    for old, new in DEPRECATED.items():
        if old in spec and old not in params and new not in spec:
            deprecation(f"{where}: {kind}", old, new)
            spec[new] = spec.pop(old)
    if set(spec) & filled:
        key = sorted(set(spec) & filled)[0]
        raise ConfigError(f"{where}: {kind} key {key!r}: the runner sets it (the stage folder; the run's seed)")
    if unknown := [key for key in spec if key not in params]:
        raise ConfigError(f"{where}: unknown {kind} key {unknown[0]!r}; it takes {', '.join(params)}")
    if missing := [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in spec]:
        raise ConfigError(f"{where}: {kind} key {missing[0]!r} is required")
    try:
        checked = _stage_parser(kind).parse_object(spec).as_dict()
    except ArgumentError as err:
        key = next((k for k in spec if not _valid(kind, k, spec[k])), None)
        message = f"{kind} key {key!r}: {spec[key]!r} is not of type {params[key].annotation}" if key else \
            " ".join(str(err).split())
        raise ConfigError(f"{where}: {message}") from None
    if kind == "evaluate":
        for key in ("root", "split", "kind"):
            if isinstance(checked[key], list):
                raise ConfigError(f"{where}: evaluate key {key!r}: a stage scores one dataset; write one evaluate "
                                  "stage per root")
        try:
            as_cost(checked["cost"])
        except ConfigError as err:
            raise ConfigError(f"{where}: evaluate key {err}") from None
    return checked


def run_workflow(kind: str, spec: dict, stage_dir: Path, output: Path, seed: int, where: str, resume: bool,
                 cost: Cost | None = Cost()) -> dict:
    """An evaluate, tta or fda stage: its verb's function with the stage's keys (defaults: the function's own).
    ``cost``: the run's setting (``adapt run --cost``): an evaluate stage's unless it sets its own (its metrics
    carry the record); a tta or fda stage is measured here, into its ``cost``."""
    checked = check_spec(kind, spec, where)
    print(f"   {kind} {', '.join(f'{k}={v}' for k, v in spec.items())}", flush=True)
    try:
        if kind == "evaluate":  # one root: its metrics
            return {"metrics": WORKFLOWS[kind][0](**dict(checked, cost=spec.get("cost", cost)), output=str(stage_dir))}
        if resume and output.is_file():  # written atomically: present means complete
            return {"checkpoint": str(output)}
        with Tracker(cost, torch_device(checked.get("accelerator", "cpu"))) as tracker:
            WORKFLOWS[kind][0](**checked, output=str(output), seed=seed)
    except (ConfigError, DataError) as err:
        raise (ConfigError if isinstance(err, ConfigError) else DataError)(f"{where}: {err}") from None
    return {"checkpoint": str(output), "cost": tracker.record}


def stage_cost(stage_dir: Path, kind: str, record: dict) -> dict | None:
    """What a finished stage cost, from its own records: ``record``'s ``cost`` (stage.json; a tta or fda stage's
    result), an evaluate stage's metrics, or a fit's ``run.json`` files under ``stage_dir`` (a fit continued after
    an interrupt: every session, added up). None when they hold no cost."""
    if record.get("cost") or kind != "fit":
        return record.get("cost") or (record.get("metrics") or {}).get("cost")
    runs = [read_record(path).get("cost") for path in sorted(Path(stage_dir).rglob("run.json"))]
    runs = [run for run in runs if run]
    return runs[0] if len(runs) == 1 else add_up(runs) if runs else None


def add_up(costs: list[dict]) -> dict:
    """The sum of cost records: ``wall_seconds``, ``device_hours`` per unit (GPU hours, CPU process hours), and
    ``energy_kwh`` and ``emissions_kg`` when every record has them (``without_energy``: how many do not: tracker
    off, failed, or older records; then the sums over the others are ``energy_kwh_known``, ``emissions_kg_known``)."""
    hours: dict[str, float] = {}
    for cost in costs:
        found = cost.get("device_hours", {})
        for unit, value in (found.items() if isinstance(found, dict) else
                            [(cost.get("device_hours_unit", "device hours").split(" (")[0], found)]):
            hours[unit] = hours.get(unit, 0.0) + value
    measured = [c for c in costs if "energy_kwh" in c or "energy_kwh_known" in c]
    sums = {key: sum(c.get(key, c.get(f"{key}_known", 0.0)) for c in measured)
            for key in ("energy_kwh", "emissions_kg")}
    missing = len(costs) - len(measured) + sum(c.get("without_energy", 0) for c in measured)
    return {"wall_seconds": round(sum(c.get("wall_seconds", 0.0) for c in costs), 3), "device_hours": hours,
            **({f"{k}_known": v for k, v in sums.items()} if missing else sums), "records": len(costs),
            "without_energy": missing}


def experiment_cost(out: Path, stages: list[dict], records: dict[str, dict]) -> dict:
    """``OUT/cost.json``: each stage's cost (``stage_cost``; reused stages: that of the run that made them) and
    their total (``add_up``)."""
    costs = {s["name"]: stage_cost(out / s["name"], stage_kind(s), records.get(s["name"]) or {}) for s in stages}
    return {"stages": costs, "total": add_up([c for c in costs.values() if c]),
            "stages_without_cost": [name for name, cost in costs.items() if not cost]}


def seeds_cost(out: Path, seeds: list[int]) -> dict:
    """The ``cost`` of a multi-seed summary: stage -> seed -> cost (from ``OUT/seed_N/cost.json``) and the total."""
    found = {seed: read_record(out / f"seed_{seed}" / "cost.json").get("stages", {}) for seed in seeds}
    names = dict.fromkeys(name for stages in found.values() for name in stages)
    return {"stages": {name: {seed: stages.get(name) for seed, stages in found.items()} for name in names},
            "total": add_up([cost for stages in found.values() for cost in stages.values() if cost])}


def cost_line(total: dict) -> str:
    """``cost: 12.3 min, 0.0041 CPU process hours, 1.23 Wh, 0.58 g CO2-eq`` (a total of ``add_up``)."""
    hours = ", ".join(f"{value:.3g} {unit}" for unit, value in total.get("device_hours", {}).items())
    energy, emissions = (total.get(k, total.get(f"{k}_known", 0.0)) for k in ("energy_kwh", "emissions_kg"))
    missing = f" ({total['without_energy']} of {total['records']} records without energy)" \
        if total.get("without_energy") else ""
    return (f"cost: {total['wall_seconds'] / 60:.1f} min, {hours or '0 device hours'}, {energy * 1000:.3g} Wh, "
            f"{emissions * 1000:.3g} g CO2-eq{missing}")


def _valid(kind: str, key: str, value: Any) -> bool:
    """Whether ``value`` is of the type of ``kind``'s argument ``key`` (a parser of that one argument reads it)."""
    function = WORKFLOWS[kind][0]
    others = {n for n in inspect.signature(function).parameters if n != key}
    try:
        signature_parser(function, skip=others).parse_object({key: value})
    except ArgumentError:
        return False
    return True


def check_output_key(doc: dict, path: Path) -> Any:
    """The experiment's ``output:`` (None when absent); the old ``out:`` is refused with the key to write."""
    if "out" in doc:
        raise ConfigError(f"{path}: 'out:' was renamed: write 'output: {doc['out']}' (the folder everything goes to)")
    return doc.get("output")


def stage_kind(stage: dict) -> str:
    return next(k for k in KINDS if k in stage)


def check_experiment(doc: dict, path: Path) -> list[dict]:
    """The stages of an experiment file, checked: known keys, unique names, recipes that exist, evaluate, tta and
    fda keys as their verbs read them, ``${NAME}`` naming an earlier stage with a checkpoint."""
    check_output_key(doc, path)
    unknown = set(doc) - {"output", "stages"}
    if unknown or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise ConfigError(f"{path}: an experiment has 'output' and a non-empty 'stages' list"
                          f"{f' (unknown keys: {sorted(unknown)})' if unknown else ''}")
    kinds: dict[str, str] = {}
    for i, stage in enumerate(doc["stages"]):
        kind = next((k for k in KINDS if isinstance(stage, dict) and k in stage), None)
        if kind is None or "name" not in stage:
            raise ConfigError(f"{path}: stage {i + 1} needs a 'name' and one of 'fit', 'evaluate', 'tta' or 'fda'")
        name = str(stage["name"])
        where = f"{path}: stage {name!r}"
        if set(stage) - KINDS[kind]:
            raise ConfigError(f"{where}: unknown keys {sorted(set(stage) - KINDS[kind])}")
        if name in kinds or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            raise ConfigError(f"{path}: stage name {name!r} must be unique and made of letters, digits, _ . - "
                              "(not first: . -)")
        if kind == "fit":
            resolve(str(stage["fit"]), f"{where}: fit")  # a file (relative to the folder you run from) or a name
            if not isinstance(stage.get("args", []), list):
                raise ConfigError(f"{where}: 'args' is a list of --key=value strings")
        else:
            check_spec(kind, stage[kind], where)
        for ref in references(stage.get("args", []) if kind == "fit" else stage[kind]):
            if ref == "out":
                raise ConfigError(f"{where}: ${{out}} was renamed: write ${{output}}")
            if ref != "output" and kinds.get(ref, "evaluate") == "evaluate":
                known = ["output", *(n for n, k in kinds.items() if k != "evaluate")]
                raise ConfigError(f"{where}: ${{{ref}}} names no earlier stage with a checkpoint (known: "
                                  f"{', '.join(known)})")
        kinds[name] = kind
    return doc["stages"]


def references(value: Any) -> list[str]:
    """The names in ``${NAME}`` anywhere in ``value`` (strings, lists, mappings), in order, each once."""
    if isinstance(value, str):
        return list(dict.fromkeys(REFERENCE.findall(value)))
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return list(dict.fromkeys(name for item in items for name in references(item)))


def substitute(value: Any, names: dict[str, str], where: str) -> Any:
    """``value`` with each ``${NAME}`` replaced by ``names[NAME]`` (in strings, also inside lists and mappings)."""
    if isinstance(value, dict):
        return {key: substitute(item, names, where) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, names, where) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match[1] not in names:
            raise ConfigError(f"{where}: ${{{match[1]}}} names no earlier stage with a checkpoint (known: "
                              f"{', '.join(sorted(names))})")
        return names[match[1]]

    return REFERENCE.sub(replace, value)
