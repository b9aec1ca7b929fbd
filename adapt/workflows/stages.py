"""The stages of an experiment (``adapt run``): their keys, read from the signatures of the verbs' functions (one
signature serves the command line and the experiment file), checked before anything runs; ``${NAME}`` references.
Whether a finished stage may be reused is ``adapt.workflows.fingerprints``' question.
"""

from __future__ import annotations

import functools
import inspect
import re
from pathlib import Path
from typing import Any, Callable

from jsonargparse import ArgumentError, ArgumentParser

from adapt.errors import ConfigError
from adapt.workflows.evaluate import evaluate_command
from adapt.workflows.fda import fda_checkpoint
from adapt.workflows.tta import adapt_checkpoint

# the workflow each kind of stage calls (the function behind its `adapt` verb, so a stage takes that verb's option
# names and types), and the arguments the runner fills in itself: the stage folder, and the run's seed (TENT's
# batches, FDA's references)
WORKFLOWS: dict[str, tuple[Callable, set[str]]] = {
    "evaluate": (evaluate_command, {"out"}), "tta": (adapt_checkpoint, {"output", "seed"}),
    "fda": (fda_checkpoint, {"output", "seed"})}
OUTPUTS = {"fit": "checkpoints/last.ckpt", "tta": "adapted.ckpt", "fda": "fda.ckpt", "evaluate": "metrics.json"}
REFERENCE = re.compile(r"\$\{([^}]+)\}")
KINDS = {"fit": {"name", "fit", "args"}, "evaluate": {"name", "evaluate"}, "tta": {"name", "tta"},
         "fda": {"name", "fda"}}


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
    the workflow's signature; defaults filled in). ConfigError (one line, naming ``where`` and the key) otherwise."""
    function, filled = WORKFLOWS[kind]
    params = {n: p for n, p in inspect.signature(function).parameters.items() if n not in filled}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: '{kind}:' takes a mapping of `adapt {kind}`'s options ({', '.join(params)})")
    if set(spec) & filled:
        key = sorted(set(spec) & filled)[0]
        raise ConfigError(f"{where}: {kind} key {key!r}: the runner sets it (the stage folder; the run's seed)")
    try:
        checked = _stage_parser(kind).parse_object(spec).as_dict()
    except ArgumentError as err:
        text = " ".join(str(err).split())
        if found := re.search(r"Option '([^']+)' is not accepted", text):
            message = f"unknown {kind} key {found[1]!r}; it takes {', '.join(params)}"
        elif found := re.search(r"arguments are required: (.+)$", text):
            message = f"{kind} key {found[1]!r} is required"
        elif (found := re.search(r'Parser key "([^"]+)"', text)) and found[1] in params:
            message = f"{kind} key {found[1]!r}: {spec.get(found[1])!r} is not of type {params[found[1]].annotation}"
        else:
            message = text
        raise ConfigError(f"{where}: {message}") from None
    if kind == "evaluate":
        for key in ("root", "split", "kind"):
            if isinstance(checked[key], list):
                raise ConfigError(f"{where}: evaluate key {key!r}: a stage scores one dataset; write one evaluate "
                                  "stage per root")
    return checked


def stage_kind(stage: dict) -> str:
    return next(k for k in KINDS if k in stage)


def check_experiment(doc: dict, path: Path) -> list[dict]:
    """The stages of an experiment file, checked: known keys, unique names, recipes that exist, evaluate, tta and
    fda keys as their verbs read them, ``${NAME}`` naming an earlier stage with a checkpoint."""
    unknown = set(doc) - {"out", "stages"}
    if unknown or not isinstance(doc.get("stages"), list) or not doc["stages"]:
        raise ConfigError(f"{path}: an experiment has 'out' and a non-empty 'stages' list"
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
            if not Path(stage["fit"]).is_file():
                raise ConfigError(f"{where}: recipe {stage['fit']} not found (paths are relative to the folder you "
                                  "run from)")
            if not isinstance(stage.get("args", []), list):
                raise ConfigError(f"{where}: 'args' is a list of --key=value strings")
        else:
            check_spec(kind, stage[kind], where)
        for ref in references(stage.get("args", []) if kind == "fit" else stage[kind]):
            if ref != "out" and kinds.get(ref, "evaluate") == "evaluate":
                known = ["out", *(n for n, k in kinds.items() if k != "evaluate")]
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
