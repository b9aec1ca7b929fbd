"""Whether a stage of an experiment (``adapt run``) may reuse its earlier result: fingerprints and records.

A finished stage writes ``OUT/NAME/stage.json``: its result (``checkpoint`` or ``metrics``), ``seconds``, its output
file with that file's sha256 (``output``: a fit's ``checkpoints/last.ckpt``, a tta stage's ``adapted.ckpt``, an fda
stage's ``fda.ckpt``, an evaluate stage's ``metrics.json``), and its **fingerprint**: the sha256 of the canonical
JSON of its ``parts``, kept in stage.json too so that a later run can say which part changed:

- ``stage``: the stage as written, after ``${...}`` substitution (its kind with its keys, or a fit's recipe and args);
- ``recipes``: the sha256 of each recipe file a fit stage reads (``fit:`` and every ``--config`` of its arguments);
- ``files``: the sha256 of every other file the stage, its arguments or its recipes name by path (a checkpoint, an
  ``init_from``), and of the class and split lists of every dataset folder they name;
- ``arguments``: the command line's extra arguments (fit stages: the seed is one) and the run's seed (tta, fda);
- ``upstream``: for each stage named with ``${NAME}``, its fingerprint and its output's sha256;
- ``adapt``: the package version, a sha256 of its source files and the versions of the libraries that shape results.

A stage writes ``OUT/NAME/started.json`` (the same fingerprint and parts) when it starts, so that an unfinished
stage is continued only with the inputs it started with. Nothing is deleted: a stage that runs again first moves
its folder to ``OUT/.stale/NAME-FINGERPRINT[:8]-N``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import adapt
from adapt.catalogue import recipe_file
from adapt.provenance import versions


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FileHashes:
    """sha256 of files, cached by (path, size, mtime_ns): within one run a checkpoint is read once. None for a
    missing file."""

    def __init__(self) -> None:
        self._known: dict[tuple, str] = {}

    def __call__(self, path: str | Path) -> str | None:
        try:
            stat = Path(path).stat()
        except OSError:
            return None
        key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._known:
            self._known[key] = file_sha256(path)
        return self._known[key]


def source_digest(folder: str | Path) -> str:
    """sha256 over every ``*.py`` under ``folder``, sorted by relative path: each path and its bytes' sha256."""
    folder, digest = Path(folder), hashlib.sha256()
    for relative in sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*.py")):
        digest.update(relative.encode() + b"\0" + hashlib.sha256((folder / relative).read_bytes()).digest())
    return digest.hexdigest()


def adapt_identity() -> dict:
    """adapt's part of every fingerprint: the package version, the digest of its source files and the versions of
    the libraries that shape a result (those a checkpoint records). The git commit is recorded beside the
    fingerprint (``adapt.provenance.git_commit``), never in it: a commit that only changes documentation (or other packages' files)
    must not make finished results stale."""
    libraries = {name: version for name, version in versions().items() if name != "adapt-seg"}
    return {"version": adapt.__version__, "source": source_digest(Path(adapt.__file__).parent),
            "libraries": libraries}


def digest(value: Any) -> str:
    """sha256 hex of ``value``'s canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def config_files(args: list[str]) -> list[str]:
    """The files of ``--config FILE`` / ``--config=FILE`` in ``args``."""
    return [a.split("=", 1)[1] if a.startswith("--config=") else args[i + 1] for i, a in enumerate(args)
            if a.startswith("--config=") or (a == "--config" and i + 1 < len(args))]


def _strings(value: Any) -> list[str]:
    """Every string in ``value`` (mappings, lists); of a ``--key=value`` argument, its value."""
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return [value.split("=", 1)[1] if value.startswith("--") and "=" in value else value] \
        if isinstance(value, str) else []


def named_files(values: list[str], produced: set[str], hashes: FileHashes) -> dict[str, str]:
    """sha256 of the files the strings ``values`` name: an existing file itself (a checkpoint given by path, an
    ``init_from``); for an existing folder (a dataset root), its class list and split lists (``classes.yaml``,
    ``splits/*.txt``: which frames a stage reads). ``produced``: the experiment's own outputs, which the upstream
    part covers. Images themselves are not read: replace a dataset's files and the stage is not re-run."""
    files = {}
    for value in dict.fromkeys(values):
        if not value or len(value) > 4096 or "\n" in value or value in produced:
            continue
        path = Path(value)
        try:
            named = [path] if path.is_file() else [path / "classes.yaml", *sorted((path / "splits").glob("*.txt"))] \
                if path.is_dir() else []
        except OSError:
            continue
        files.update({str(f): sha for f in named if (sha := hashes(f))})
    return files


def fingerprint_parts(kind: str, written: dict, extra: list[str], seed: int, upstream: dict[str, dict],
                      identity: dict, hashes: FileHashes, produced: set[str] = frozenset()) -> dict:
    """What determines a stage's result (see the module's docstring); ``written``: the stage after substitution
    (without its name), ``upstream``: referenced stage -> {fingerprint, output}, ``produced``: the paths of the
    experiment's stage outputs (left to the upstream part)."""
    named = [written["fit"], *config_files(written.get("args", [])), *config_files(extra)] if kind == "fit" else []
    recipes = [recipe_file(r) for r in named]  # a shipped recipe's name (demo/source_only): its file
    values = _strings(written) + _strings(list(extra))
    for recipe in recipes:  # the paths a recipe names (data roots, a segmenter_checkpoint, an init_from)
        try:
            values += _strings(yaml.safe_load(Path(recipe).read_text()))
        except (OSError, yaml.YAMLError):
            pass  # a missing or broken recipe: its hash says "missing", the fit says why
    # a fit's seed is in its arguments (--seed_everything) or its recipe; tta and fda stages are given the run's
    arguments = {"extra": list(extra)} if kind == "fit" else {"seed": seed} if kind != "evaluate" else {}
    return {"stage": written, "recipes": {f: hashes(f) or "missing" for f in recipes},
            "files": named_files([v for v in values if v not in recipes], produced, hashes), "arguments": arguments,
            "upstream": upstream, "adapt": identity}


def read_record(path: Path) -> dict:
    """A stage.json / started.json; {} when missing or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _arguments(arguments: dict) -> str:
    words = [*arguments.get("extra", []), *([f"seed {arguments['seed']}"] if "seed" in arguments else [])]
    return " ".join(words) or "none"


def changes(old: dict, new: dict, ran: list[str]) -> list[str]:
    """Why the parts ``old`` (recorded) and ``new`` (now) differ, part by part; ``ran``: upstream stages that ran
    again in this run."""
    reasons = []
    before = old.get("adapt") or {}
    if before.get("version") != new["adapt"]["version"]:
        reasons.append(f"adapt's version changed ({before.get('version')} -> {new['adapt']['version']})")
    elif before.get("source") != new["adapt"]["source"]:
        reasons.append("adapt's code changed")
    libraries = before.get("libraries") or {}
    moved = [f"{n} {libraries.get(n)} -> {v}" for n, v in new["adapt"].get("libraries", {}).items()
             if libraries.get(n) != v]
    if moved:
        reasons.append(f"library versions changed ({', '.join(moved)})")
    if old.get("stage") != new["stage"]:
        before, now = old.get("stage") or {}, new["stage"]
        if set(before) == set(now) and "fit" not in now:  # the same kind: which of its keys
            before, now = before[next(iter(now))], now[next(iter(now))]
        keys = sorted(k for k in {*before, *now} if before.get(k) != now.get(k)) if set(before) == set(now) else []
        reasons.append(f"the stage's settings changed ({', '.join(keys)})" if keys else "the stage's settings changed")
    recipes = old.get("recipes") or {}
    reasons += [f"recipe {file} changed" for file, sha in new["recipes"].items() if recipes.get(file, sha) != sha]
    files = old.get("files") or {}
    reasons += [f"file {file} changed" if file in files else f"it reads another file ({file})"
                for file, sha in new.get("files", {}).items() if files.get(file) != sha]
    if old.get("arguments") != new["arguments"]:
        reasons.append(f"arguments changed ({_arguments(old.get('arguments') or {})} -> "
                       f"{_arguments(new['arguments'])})")
    for name, now in new["upstream"].items():
        if name in ran:
            reasons.append(f"upstream stage {name!r} ran again")
        elif (old.get("upstream") or {}).get(name) != now:
            reasons.append(f"upstream stage {name!r} changed since this stage finished")
    return reasons


@dataclass
class Decision:
    action: str  # reuse (finished, same inputs and output), run, or continue (an unfinished run, same inputs)
    reason: str
    stale: str | None = None  # a folder to move aside before running: the start of its old fingerprint


def decide(stage_dir: Path, output: Path, parts: dict, ran: list[str], hashes: FileHashes) -> Decision:
    """Whether the stage in ``stage_dir`` (its output file ``output``) is reused, runs or continues, and why."""
    fingerprint = digest(parts)
    if (stage_dir / "stage.json").is_file():
        record = read_record(stage_dir / "stage.json")
        old = record.get("fingerprint")
        if not old:
            return Decision("run", "recorded before fingerprints", "old")
        reasons = changes(record.get("parts") or {}, parts, ran) or ([] if old == fingerprint else
                                                                     ["its inputs changed"])
        if reasons:
            return Decision("run", "; ".join(reasons), old[:8])
        what = "metrics.json" if output.name == "metrics.json" else "checkpoint"
        now = hashes(output)
        if now is None:
            return Decision("run", f"its {what} {output} is missing", old[:8])
        if now != (record.get("output") or {}).get("sha256"):
            return Decision("run", f"its {what} changed since it finished", old[:8])
        return Decision("reuse", "finished earlier with the same inputs; its output is unchanged")
    if not stage_dir.is_dir() or not any(stage_dir.iterdir()):
        return Decision("run", "no record of a finished run")
    started = read_record(stage_dir / "started.json").get("fingerprint")
    if started == fingerprint:
        return Decision("continue", "an unfinished run with the same inputs")
    return Decision("run", f"an unfinished run {'with other inputs' if started else 'without a record of its inputs'}",
                    (started or "unknown")[:8])


def move_aside(stage_dir: Path, label: str) -> Path:
    """Move ``stage_dir`` to ``.stale/NAME-LABEL-N`` beside it (N: the first free number); returns the new path."""
    stale = stage_dir.parent / ".stale"
    stale.mkdir(parents=True, exist_ok=True)
    number = 1
    while (stale / f"{stage_dir.name}-{label}-{number}").exists():
        number += 1
    return stage_dir.rename(stale / f"{stage_dir.name}-{label}-{number}")
