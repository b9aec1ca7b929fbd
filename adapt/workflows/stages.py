"""The stages of an experiment (``adapt run``): their keys, read from the signatures of the verbs' functions (one
signature serves the command line and the experiment file), checked before anything runs; ``${NAME}`` references.
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
from adapt.errors import ConfigError
from adapt.workflows.evaluate import evaluate_command
from adapt.workflows.fda import fda_checkpoint
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
    return checked


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
