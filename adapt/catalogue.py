"""The shipped recipes: where they lie, their names, and copies of them to edit.

A recipe's name is its path under the recipes folder without ``.yaml``: ``demo/source_only``, ``camvid/mic``.
The folder is ``recipes/`` at the top of the repository; a wheel carries it as ``adapt/recipes`` (pyproject.toml
maps it there at build time), so an installed adapt finds it inside the package and a clone or an editable install
finds the repository's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from adapt.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent


def recipes_root() -> Path:
    """The folder of the shipped recipes: ``adapt/recipes`` in an installed wheel, else the repository's
    ``recipes/`` beside the ``adapt`` package (a clone, an editable install)."""
    for folder in (_PACKAGE / "recipes", _PACKAGE.parent / "recipes"):
        if folder.is_dir():
            return folder
    raise ConfigError(f"no shipped recipes found (looked in {_PACKAGE / 'recipes'} and {_PACKAGE.parent / 'recipes'});"
                      " reinstall adapt-seg")


def recipe_names() -> list[str]:
    """Every shipped recipe's name, sorted (``camvid/benchmark``, ..., ``demo/source_only``, ...)."""
    root = recipes_root()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def header_line(path: str | Path) -> str:
    """The first line of a recipe's header comment, without ``#`` ('' when it has none)."""
    with open(path, encoding="utf-8") as file:
        for line in file:
            if not line.startswith("#"):
                return ""
            if line.strip("#").strip():
                return line.strip("#").strip()
    return ""


def catalogue() -> dict[str, str]:
    """Shipped recipe name -> the first line of its header comment."""
    root = recipes_root()
    return {name: header_line(root / f"{name}.yaml") for name in recipe_names()}


def is_recipe_name(value: str) -> bool:
    """Whether ``value`` names a shipped recipe (with or without ``.yaml``)."""
    name = value.removesuffix(".yaml")
    return name in recipe_names()


def resolve(value: str | Path, where: str = "--config") -> Path:
    """A recipe or experiment file: ``value`` itself when it is a file, else the shipped recipe of that name
    (``demo/source_only`` or ``demo/source_only.yaml``). ConfigError naming ``where`` when it is neither."""
    path = Path(value)
    if path.is_file():
        return path
    name = str(value).removesuffix(".yaml")
    if name in recipe_names():
        return recipes_root() / f"{name}.yaml"
    close = [n for n in recipe_names() if n.split("/")[-1] == name.split("/")[-1]][:3]
    hint = f" (shipped: {', '.join(close)})" if close else "; `adapt recipes` lists the shipped ones"
    raise ConfigError(f"{where}: {value} is neither a file nor a shipped recipe name{hint}")


def recipe_file(value: str) -> str:
    """``value`` itself when it is a file or names no shipped recipe, else the path of the shipped recipe it names
    (what ``adapt fit --config`` reads)."""
    if Path(value).is_file():
        return value
    try:
        return str(resolve(value))
    except ConfigError:  # neither: LightningCLI names the missing --config file itself
        return value


def copy_recipes(what: str, output: str | Path) -> list[Path]:
    """Copy shipped recipes into ``output`` to edit, keeping their folders (``output/camvid/mic.yaml``): ``what``
    is a name (``camvid/mic``), a folder (``camvid``) or ``all``. Refuses, before copying anything, when a file it
    would write exists. Returns the written files."""
    names = recipe_names()
    if what == "all":
        chosen = names
    elif what.removesuffix(".yaml") in names:
        chosen = [what.removesuffix(".yaml")]
    else:
        chosen = [n for n in names if n.startswith(what.rstrip("/") + "/")]
    if not chosen:
        folders = sorted({n.split("/")[0] for n in names})
        raise ConfigError(f"--copy: {what} is no shipped recipe or folder; give a name (adapt recipes lists them), "
                          f"a folder ({', '.join(folders)}) or all")
    root, output = recipes_root(), Path(output)
    targets = {name: output / f"{name}.yaml" for name in chosen}
    for target in targets.values():
        if target.exists():
            raise ConfigError(f"--copy: {target} exists; remove it or give another --output (nothing was copied)")
    for name, target in targets.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / f"{name}.yaml", target)
    return list(targets.values())


def recipes(copy: str | None = None, output: str | None = None) -> dict:
    """List the shipped recipes (name and the first line of each header), or copy some of them to edit.

    Returns ``{"recipes": {name: header line}}``, or with ``copy`` ``{"copied": [paths]}``.

    Args:
        copy: copy instead of listing: a recipe name (demo/source_only), a folder of them (camvid) or all.
        output: with ``copy``: the folder to copy into (folders kept: OUTPUT/camvid/mic.yaml); an existing file
            there is never overwritten (nothing is copied then).
    """
    if copy is None:
        if output is not None:
            raise ConfigError("--output: give it with --copy NAME (the folder to copy recipes into)")
        return {"recipes": catalogue()}
    if output is None:
        raise ConfigError("--copy: give --output DIR, the folder to copy the recipes into")
    return {"copied": [str(p) for p in copy_recipes(copy, output)]}


def format_recipes(result: dict) -> str:
    """``recipes``' result as printable lines: one per recipe (name, header line) or per copied file."""
    if "copied" in result:
        return "\n".join(f"wrote {p}" for p in result["copied"])
    width = max(map(len, result["recipes"]), default=0)
    return "\n".join(f"{name:<{width}}  {line}" for name, line in result["recipes"].items())
