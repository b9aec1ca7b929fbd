"""The ``adapt`` verbs that are not LightningCLI's, generated from the typed signatures of the functions that do
their work, by jsonargparse (as LightningCLI reads the tasks' constructors): ``adapt VERB --help`` lists each
argument with its type, default and docstring line. The syntax is jsonargparse's: ``--size [H,W]``,
``--root [A,B]`` (or ``--root+ A --root+ B``), ``--plots false``.

Each verb: the function that does the work, and how its result is told to the person who ran it.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from jsonargparse import ArgumentParser

from adapt.data.check import check_dataset, format_report
from adapt.data.synthetic import write_pair
from adapt.workflows.compare import compare, format_comparison
from adapt.workflows.evaluate import evaluate_command
from adapt.workflows.export import export_onnx
from adapt.workflows.fda import fda_checkpoint
from adapt.workflows.gap import data_gap, format_gap
from adapt.workflows.predict import predict_folder
from adapt.workflows.stages import signature_parser
from adapt.workflows.translate import translate_folder
from adapt.workflows.tta import adapt_checkpoint


def _tta_line(record: dict) -> str:
    extra = (f"; entropy {record['entropies'][0]:.3f} -> {record['entropies'][-1]:.3f} nats"
             if "entropies" in record else "")
    return f"{record['method']}: {record['images']} target images{extra}; wrote {record['output']}"


def _check_report(report: dict) -> str:
    if report["problems"]:  # printed, then a non-zero exit: a script can stop on it
        print(format_report(report))
        sys.exit(1)
    return format_report(report)


# verb -> (function, positional arguments, what to print of its result)
VERBS: dict[str, tuple[Callable, bool, Callable[[Any], str | None]]] = {
    "evaluate": (evaluate_command, False, lambda result: None),
    "compare": (compare, True, format_comparison),
    "translate": (translate_folder, False, lambda count: f"wrote {count} translated images"),
    "fda": (fda_checkpoint, False, lambda r: f"fda: beta {r['beta']}, {r['source_images']} source and "
                                             f"{r['target_images']} target references; wrote {r['output']}"),
    "tta": (adapt_checkpoint, False, _tta_line),
    "export": (export_onnx, False, lambda r: f"wrote {r['output']} (and {r['metadata']})"),
    "predict": (predict_folder, False, lambda r: f"wrote {r['num_images']} predictions to {r['output']}"),
    "data synth": (write_pair, False, lambda roots: f"wrote {roots[0]} and {roots[1]}"),
    "data check": (check_dataset, True, _check_report),
    "data gap": (data_gap, False, format_gap),
}


def verb_parser(verb: str) -> ArgumentParser:
    function, positional, _ = VERBS[verb]
    return signature_parser(function, f"adapt {verb}", positional)


def run_verb(verb: str, argv: list[str]) -> Any:
    """Parse ``argv`` against ``verb``'s function, call it, print what it gives back; returns the result."""
    function, _, tell = VERBS[verb]
    config = verb_parser(verb).parse_args(argv)
    result = function(**config.as_dict())
    line = tell(result)
    if line:
        print(line)
    return result
