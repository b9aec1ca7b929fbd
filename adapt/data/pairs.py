"""The files of one set of a dataset and the one check that pairs them, for every layout.

Each layout's walk (``walk_folder``, ``walk_gta5``, ``walk_cityscapes``, ...) returns a ``Tree``; every dataset turns
it into its samples with ``pair_files``, the one owner of the paired-file errors (listed images that are not there,
labels not found, labels without an image, sets without a single pair); list and split files are read by
``read_list_file``. ``adapt data check`` reads the same ``Tree`` and reports instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from adapt.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Tree:
    """The files of one set of a dataset, as its layout's walk finds them (the one walk of each layout, shared by
    the datasets and ``adapt data check``): ``names`` to read, in order; name -> image file and name -> label
    file (existing files only); ``orphans``: label files that belong to no image."""

    names: list[str]
    images: dict[str, Path]
    labels: dict[str, Path]
    orphans: list[Path] = field(default_factory=list)


@dataclass
class Pairs:
    """A dataset's samples, in order: ``names``, their ``images`` and ``label_files`` (where each label is, or
    would be); ``unpaired``: names of images without a label and of labels without an image that were skipped
    (sorted; only with ``skip_unlabelled``)."""

    names: list[str]
    images: list[Path]
    label_files: list[Path]
    unpaired: list[str] = field(default_factory=list)


def images_in(image_dir: Path) -> dict[str, Path]:
    """name (stem) -> image file of the .png/.jpg files in ``image_dir``, sorted; {} when it holds none."""
    return {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def labels_in(label_dir: Path, images: dict[str, Path]) -> tuple[dict[str, Path], list[Path]]:
    """(name -> label file, label files whose name has no image) of the .png files in ``label_dir`` (none when
    it is missing), sorted."""
    labels = {p.stem: p for p in sorted(label_dir.glob("*.png"))} if label_dir.is_dir() else {}
    return labels, [p for n, p in labels.items() if n not in images]


def read_list_file(list_file: str | Path, suffix: str = "", what: str = "list file",
                   hint: str = "give an existing file of image names, one per line") -> list[str]:
    """Stems listed in ``list_file``, one per line: a path (any folders, with or without ``.png`` / ``.jpg``) or a
    bare stem; a trailing ``suffix`` (e.g. ``_leftImg8bit``) is removed. Blank lines and ``#`` comments are skipped.
    DataError ``LIST_FILE: WHAT not found; HINT`` when it is missing, and when it lists nothing."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DataError(f"{list_file}: {what} not found; {hint}")
    stems = []
    for line in list_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.replace("\\", "/").rsplit("/", 1)[-1]
        name = name[:-4] if name.lower().endswith((".png", ".jpg")) else name
        stems.append(name[: -len(suffix)] if suffix and name.endswith(suffix) else name)
    if not stems:
        raise DataError(f"{list_file}: {what} is empty; list at least one image")
    return stems


def pair_files(tree: Tree, labels: bool, label_path: Callable[[str, Path], Path], image_dir: Path, hint: str,
               list_file: str | Path | None = None, skip_unlabelled: bool = False,
               refuse_orphans: bool = False) -> Pairs:
    """The samples of ``tree``, every name of ``tree.names`` checked against the files found. One-line DataErrors:

    - ``LIST_FILE: N listed images are not in IMAGE_DIR (first: NAME)``: a listed name has no image;
    - ``LABEL: label not found (N of M images have no label); HINT`` (``labels`` and not ``skip_unlabelled``);
    - ``LABEL: label without an image (...)``: with ``refuse_orphans``, a label file no image owns;
    - with ``skip_unlabelled`` (GTA5: some downloads miss pairs) unlabelled names are skipped and listed in
      ``unpaired``; DataError only when no pair is left.

    Args:
        tree: the set's files (the layout's walk).
        labels: the dataset reads labels.
        label_path: (name, image file) -> where the layout keeps that image's label (the file named when missing).
        image_dir: the folder a missing listed image was expected in (for the message).
        hint: what to do about a missing label (the end of its message).
        list_file: the list or split file that named ``tree.names`` (None: every image).
    """
    absent = [n for n in tree.names if n not in tree.images]
    if absent:
        raise DataError(f"{list_file}: {len(absent)} listed images are not in {image_dir} (first: {absent[0]})")
    names, unpaired = list(tree.names), []
    if labels and skip_unlabelled:
        unpaired = sorted(set(tree.images) ^ set(tree.labels))
        names = [n for n in names if n in tree.labels]
        if not names:
            label_dir = label_path(tree.names[0], tree.images[tree.names[0]]).parent
            raise DataError(f"{list_file}: none of the listed images has a label in {label_dir}" if list_file else
                            f"{image_dir.parent}: no image in {image_dir} has a label of the same name in "
                            f"{label_dir} ({len(unpaired)} unpaired files); {hint}")
    images = [tree.images[n] for n in names]
    label_files = [tree.labels.get(n) or label_path(n, p) for n, p in zip(names, images)]
    if labels:
        missing = [p for p in label_files if not p.is_file()]
        if missing:
            raise DataError(f"{missing[0]}: label not found ({len(missing)} of {len(names)} images have no "
                            f"label); {hint}")
        if refuse_orphans and tree.orphans:
            orphans = tree.orphans
            raise DataError(f"{orphans[0]}: label without an image ({len(orphans)} labels in {orphans[0].parent} "
                            f"have no image in {image_dir}); add the images or remove the labels")
    return Pairs(names, images, label_files, unpaired)
