"""Recipes: YAML files whose keys are constructor arguments (LightningCLI / jsonargparse), checked early.

jsonargparse validates recipes fully (types, values, everything this module leaves alone), but answers a misspelt or
renamed key of a task or data module with a usage screen and a nested union error over every subclass it tried,
which does not say which file or which key. ``check_recipe`` runs first and only does what that message cannot: it
names the key, where it came from (the recipe file or the command-line option) and the closest valid name, or the
new spelling of a renamed argument, in one line.

A task or data class that renames a constructor argument lists it in a class attribute ``renamed_arguments:
dict[str, str]`` (old init_arg name -> the new key under ``init_args``, dotted when nested: ``{"mask_ratio":
"masking.ratio"}``); an old key then gets ``model.init_args.mask_ratio was renamed: use
model.init_args.masking.ratio``. A value in parentheses says why an argument is gone instead (``{"ignore_index":
"(labels mark ignored pixels with 255)"}``: ``... ignore_index was removed (labels mark ...)``).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from pathlib import Path
from typing import Any

import yaml
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ModelCheckpoint

from adapt.errors import ConfigError

# the top-level keys adapt's LightningCLI reads; no optimizer / lr_scheduler: each task configures its own
# (auto_configure_optimizers=False in adapt.cli), so LightningCLI rejects them
TOP_LEVEL = {"seed_everything", "trainer", "model", "data", "checkpoint", "ckpt_path", "weights_only", "resume", "cost",
             "collapse_fraction"}
FIXED = {"trainer": Trainer, "checkpoint": ModelCheckpoint}


def load_yaml(path: str | Path) -> dict:
    """A recipe file as a dict; ConfigError naming the file when it is missing or not a YAML mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: recipe {path} not found; give a file or a shipped recipe's name (adapt recipes "
                          "lists them)")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a recipe is a YAML mapping of keys (trainer, model, data, ...)")
    return doc


def _parameters(cls: type) -> tuple[set[str], bool]:
    """Constructor argument names of ``cls`` and whether it takes ``**kwargs``."""
    params = inspect.signature(cls.__init__).parameters
    names = {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, any(p.kind == p.VAR_KEYWORD for p in params.values())


def _import(class_path: str, where: str) -> type:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"{where}: cannot import class_path {class_path!r}; give a full dotted path such as "
                          "adapt.tasks.SegmentationTask") from None


def _unknown(key: str, valid: set[str], where: str, owner: str) -> ConfigError:
    close = difflib.get_close_matches(key.rpartition(".")[2], sorted(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; {owner} takes: {', '.join(sorted(valid))}"
    return ConfigError(f"{where}: unknown key {key!r}{hint}")


def check_keys(doc: dict[str, Any], where: str) -> None:
    """Raise ConfigError for the first key in ``doc`` that no constructor takes (two levels deep)."""
    for top, value in doc.items():
        if top not in TOP_LEVEL:
            raise _unknown(top, TOP_LEVEL, where, "a recipe")
        if not isinstance(value, dict):
            continue
        if top in FIXED:
            names, _ = _parameters(FIXED[top])
            for key in value:
                if key not in names:
                    raise _unknown(f"{top}.{key}", names, where, FIXED[top].__name__)
        elif top in ("model", "data"):
            extra = set(value) - {"class_path", "init_args", "dict_kwargs"}
            if extra or "class_path" not in value:
                raise ConfigError(f"{where}: {top} needs 'class_path' and 'init_args' "
                                  f"(got {sorted(value)}); see recipes/demo/source_only.yaml")
            cls = _import(value["class_path"], f"{where}: {top}.class_path")
            names, var_kw = _parameters(cls)
            renamed = getattr(cls, "renamed_arguments", None) or {}
            for key in value.get("init_args") or {}:
                if key in renamed and key not in names:
                    new = renamed[key]
                    raise ConfigError(f"{where}: {top}.init_args.{key} was removed {new}" if new.startswith("(") else
                                      f"{where}: {top}.init_args.{key} was renamed: use {top}.init_args.{new}")
                if key not in names and not var_kw:
                    raise _unknown(f"{top}.init_args.{key}", names, where, cls.__name__)


def _nest(dotted: str, value: Any) -> dict:
    head, _, rest = dotted.partition(".")
    return {head: _nest(rest, value) if rest else value}


def check_recipe(argv: list[str]) -> None:
    """Check the recipes (``--config``/``-c`` files) and dotted overrides of a LightningCLI command line."""
    i = 0
    class_paths: dict[str, str] = {}
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            doc = load_yaml(argv[i + 1])
            check_keys(doc, str(argv[i + 1]))
            class_paths.update({k: v["class_path"] for k, v in doc.items()
                                if k in ("model", "data") and isinstance(v, dict) and "class_path" in v})
            i += 2
            continue
        if arg.startswith("--") and "." in arg and not arg.startswith("--config"):
            key = arg[2:].partition("=")[0].removesuffix("+")  # KEY+=VALUE appends to a list (jsonargparse)
            if key.startswith("trainer.callbacks."):  # init_args of the callback appended last: jsonargparse checks
                i += 1
                continue
            head, _, rest = key.partition(".")
            nested = _nest(key, None)
            if head in class_paths and rest.startswith("init_args."):
                nested[head]["class_path"] = class_paths[head]
                check_keys(nested, f"command line {arg.partition('=')[0]}")
            elif head in FIXED:
                check_keys(nested, f"command line {arg.partition('=')[0]}")
        i += 1
