"""The ``adapt`` verbs that are not LightningCLI's, generated from the typed signatures of the functions that do
their work, by jsonargparse (as LightningCLI reads the tasks' constructors): ``adapt VERB --help`` lists each
argument with its type, default and docstring line. The syntax is jsonargparse's: ``--size [H,W]``,
``--root [A,B]`` (or ``--root+ A --root+ B``), ``--plots false``.

Each verb: the function that does the work, and how its result is told to the person who ran it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

from jsonargparse import ArgumentParser

from adapt.catalogue import format_recipes, recipes
from adapt.data.check import check_dataset, format_report
from adapt.data.synthetic import write_pair
from adapt.workflows.compare import compare, format_comparison
from adapt.workflows.evaluate import evaluate_command
from adapt.workflows.experiment import demo, run
from adapt.workflows.export import export_onnx
from adapt.workflows.fda import fda_checkpoint
from adapt.workflows.gap import data_gap, format_gap
from adapt.workflows.predict import predict_folder
from adapt.workflows.stages import DEPRECATED, deprecation, signature_parser
from adapt.workflows.translate import translate_folder
from adapt.workflows.tta import adapt_checkpoint


def _tta_line(record: dict) -> str:
    extra = (f"; entropy {record['entropies'][0]:.3f} -> {record['entropies'][-1]:.3f} nats"
             if "entropies" in record else "")
    return f"{record['method']}: {record['images']} target images{extra}; wrote {record['output']}"


def _silent(result: Any) -> None:
    """For verbs that print as they go (evaluate, run, demo)."""
    return None


class Verb(NamedTuple):
    """An ``adapt`` verb: the function that does the work, whether its arguments without defaults are positional,
    how its result is told to the person who ran it, whether that result is a failure (a non-zero exit: the CLI
    decides), and whether unknown ``--key=value`` arguments go to the function as ``overrides`` (run, demo)."""

    function: Callable
    positional: bool = False
    tell: Callable[[Any], str | None] = _silent
    fails: Callable[[Any], bool] | None = None
    overrides: bool = False


VERBS: dict[str, Verb] = {
    "evaluate": Verb(evaluate_command),
    "compare": Verb(compare, True, format_comparison),
    "translate": Verb(translate_folder, tell=lambda count: f"wrote {count} translated images"),
    "fda": Verb(fda_checkpoint, tell=lambda r: f"fda: beta {r['beta']}, {r['source_images']} source and "
                                               f"{r['target_images']} target references; wrote {r['output']}"),
    "tta": Verb(adapt_checkpoint, tell=_tta_line),
    "export": Verb(export_onnx, tell=lambda r: f"wrote {r['output']} (and {r['metadata']})"),
    "predict": Verb(predict_folder, tell=lambda r: f"wrote {r['num_images']} predictions to {r['output']}"),
    "data synth": Verb(write_pair, tell=lambda roots: f"wrote {roots[0]} and {roots[1]}"),
    # a report with problems is printed, then the CLI exits non-zero: a script can stop on it
    "data check": Verb(check_dataset, True, format_report, fails=lambda report: bool(report["problems"])),
    "data gap": Verb(data_gap, tell=format_gap),
    "run": Verb(run, True, overrides=True),
    "demo": Verb(demo, overrides=True),
    "recipes": Verb(recipes, tell=format_recipes),
}


def verb_parser(verb: str) -> ArgumentParser:
    """The typed parser of ``verb`` (``adapt VERB --help`` prints it)."""
    entry = VERBS[verb]
    return signature_parser(entry.function, f"adapt {verb}", entry.positional,
                            {"overrides"} if entry.overrides else None)


def _undeprecated(verb: str, argv: list[str], names: set[str]) -> list[str]:
    """``argv`` with the old spellings of ``DEPRECATED`` (``--out``, ``--device``, ...) replaced by the dialect's,
    each with a one-line warning on stderr; only where ``verb`` has the new option and not the old one."""
    result = []
    for arg in argv:
        key, equals, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        old = key.removesuffix("+")
        new = DEPRECATED.get(old)
        if new and old not in names and new in names:
            deprecation(f"adapt {verb}", old, new)
            arg = f"--{new}{key[len(old):]}{equals}{value}"
        result.append(arg)
    return result


def _split_overrides(argv: list[str], names: set[str]) -> tuple[list[str], list[str]]:
    """The verb's own arguments (``names``) and the ``--key=value`` overrides for its fit stages (run, demo). The
    earlier spellings of ``adapt run`` stay readable: ``--seeds 0 1 2`` (jsonargparse's list syntax is ``--seeds
    [0,1,2]``), a bare ``--dry_run`` / ``--dry-run`` flag, and ``--trainer.default_root_dir=DIR`` for ``--output``."""
    own, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        key = arg[2:].partition("=")[0].removesuffix("+") if arg.startswith("--") else None
        if key in ("dry-run", "dry_run") and "=" not in arg and "dry_run" in names:
            own.append("--dry_run=true")
        elif key == "seeds" and "seeds" in names and "=" not in arg:
            values = []
            while i + 1 < len(argv) and argv[i + 1].lstrip("-").isdigit():
                values.append(argv[i + 1])
                i += 1
            own.append(f"--seeds=[{','.join(values)}]" if values else arg)  # else: --seeds [0,1], as jsonargparse
        elif key == "trainer.default_root_dir" and "output" in names:
            own.append(f"--output={arg.partition('=')[2]}" if "=" in arg else "--output")
        elif key is None or key.partition(".")[0] in names or arg in ("-h", "--help"):  # --cost.KEY: the verb's
            own.append(arg)
            if (key or "").partition(".")[0] in names and "=" not in arg and i + 1 < len(argv) and key != "dry_run":
                own.append(argv[i + 1])  # its value
                i += 1
        else:
            overrides.append(arg)
        i += 1
    return own, overrides


def run_verb(verb: str, argv: list[str]) -> Any:
    """Parse ``argv`` against ``verb``'s function, call it, print what it gives back; returns the result (the CLI
    asks ``failed`` whether it is a failure)."""
    entry = VERBS[verb]
    names = set(inspect.signature(entry.function).parameters)
    argv = _undeprecated(verb, argv, names)
    extra = {}
    if entry.overrides:
        argv, overrides = _split_overrides(argv, names - {"overrides"})
        extra = {"overrides": overrides}
    config = verb_parser(verb).parse_args(argv)
    result = entry.function(**config.as_dict(), **extra)
    line = entry.tell(result)
    if line:
        print(line)
    return result


def failed(verb: str, result: Any) -> bool:
    """Whether ``verb``'s result is a failure that the command's exit status must say (data check's problems)."""
    fails = VERBS[verb].fails
    return bool(fails and fails(result))
