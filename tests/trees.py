"""Tiny fake dataset trees in the official download layouts, for the tests (GTA5, Cityscapes, SYNTHIA, ACDC, Dark
Zurich, CARLA cannot be downloaded here): random images and labels written the way the real files are, so that the
loaders meet the real formats' pitfalls (palettised GTA5 labels, 16-bit SYNTHIA labels, BGRA CARLA frames).

Tests import them with ``from trees import write_tiny_gta5`` (pytest puts ``tests/`` on the path); scripts outside
``tests/`` (e.g. ``benchmarks/gpu_check.py``) put ``tests/`` on ``sys.path`` first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from adapt.data.acdc import ACDC_CONDITIONS, DARKZURICH_TIMES
from adapt.data.acdc import IMAGE_SUFFIX as ANON_IMAGE_SUFFIX
from adapt.data.acdc import LABEL_SUFFIX as ANON_LABEL_SUFFIX
from adapt.data.carla import TAG_COUNT, CarlaTags
from adapt.data.cityscapes import IMAGE_SUFFIX as CITYSCAPES_IMAGE_SUFFIX
from adapt.data.cityscapes import LABEL_SUFFIX as CITYSCAPES_LABEL_SUFFIX
from adapt.data.cityscapes import label_id_palette
from adapt.data.synthia import SYNTHIA_IDS
from adapt.errors import DataError


def write_tiny_gta5(root: str | Path, num: int = 4, size: tuple[int, int] = (52, 96), seed: int = 0,
                    palette: bool = True) -> None:
    """A tiny fake GTA5 in the download layout (``images/00001.png``...). Labels hold random
    label ids 0..33; with ``palette=True`` they are palettised like the real ones (mode "P" with the Cityscapes
    colours, so a colour differs from its index and ``cv2.imread`` would give the wrong answer), else mode "L"."""
    root, rng = Path(root), np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(1, num + 1):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:05d}.png")
        ids = rng.integers(0, 34, size, dtype=np.uint8)
        label = Image.fromarray(ids)  # mode "L"
        if palette:
            label = Image.frombytes("P", (size[1], size[0]), ids.tobytes())
            label.putpalette(label_id_palette().tobytes())
        label.save(root / "labels" / f"{i:05d}.png")


def write_tiny_cityscapes(root: str | Path, split: str = "val", cities: Sequence[str] = ("aachen", "bremen"),
                          per_city: int = 2, size: tuple[int, int] = (64, 128), seed: int = 0) -> list[Path]:
    """A tiny fake Cityscapes split in the official layout (random RGB images, random ``*_gtFine_labelIds.png``
    with label ids drawn from 0..33, as real gtFine files hold). Returns the image paths, sorted."""
    root, rng, paths = Path(root), np.random.default_rng(seed), []
    for city in cities:
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        for i in range(per_city):
            stem = f"{city}_{i:06d}_000019"
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            label = rng.integers(0, 34, size).astype(np.uint8)
            path = root / "leftImg8bit" / split / city / f"{stem}{CITYSCAPES_IMAGE_SUFFIX}"
            Image.fromarray(image).save(path)
            Image.fromarray(label).save(root / "gtFine" / split / city / f"{stem}{CITYSCAPES_LABEL_SUFFIX}")
            paths.append(path)
    return sorted(paths)


def write_tiny_synthia(root: str | Path, num: int = 3, size: tuple[int, int] = (16, 24), seed: int = 0) -> None:
    """A tiny fake SYNTHIA-RAND-CITYSCAPES in the download layout (``RGB/0000000.png``...).
    Labels are 16-bit 3-channel PNGs like the real ones: R holds SYNTHIA ids, every id 0..22 in the first image's
    first pixels and random ids after; G holds random instance ids up to 2000 (so reading G, or 8 bits, is wrong)."""
    root, rng = Path(root), np.random.default_rng(seed)
    (root / "RGB").mkdir(parents=True, exist_ok=True)
    (root / "GT" / "LABELS").mkdir(parents=True, exist_ok=True)
    for i in range(num):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "RGB" / f"{i:07d}.png")
        ids = rng.integers(0, 23, size).astype(np.uint16)
        if i == 0:
            ids.reshape(-1)[: len(SYNTHIA_IDS)] = np.array(SYNTHIA_IDS, dtype=np.uint16)
        instance = rng.integers(0, 2000, size).astype(np.uint16)
        bgr = np.stack([np.zeros(size, np.uint16), instance, ids], axis=-1)  # cv2 writes B, G, R
        if not cv2.imwrite(str(root / "GT" / "LABELS" / f"{i:07d}.png"), bgr):
            raise DataError(f"{root}: cannot write the tiny SYNTHIA labels")


def write_tiny_anon(root: str | Path, folders: Sequence[str], labelled: Sequence[str] = (), per_folder: int = 2,
                    size: tuple[int, int] = (16, 24), seed: int = 0) -> list[Path]:
    """Tiny ACDC / Dark Zurich folders in the official layout: ``per_folder`` random frames in
    ``ROOT/rgb_anon/FOLDER/GOPRxxxx/`` for each of ``folders`` (``night/val`` for ACDC, ``val/night`` for Dark
    Zurich), with random ``*_gt_labelIds.png`` (label ids 0..33 and 255) in ``ROOT/gt/FOLDER/GOPRxxxx/`` for those in
    ``labelled``. Returns the image paths, sorted."""
    root, rng, paths = Path(root), np.random.default_rng(seed), []
    for k, folder in enumerate(folders):
        sequence = f"GOPR{475 + k:04d}"
        (root / "rgb_anon" / folder / sequence).mkdir(parents=True, exist_ok=True)
        if folder in labelled:
            (root / "gt" / folder / sequence).mkdir(parents=True, exist_ok=True)
        for i in range(per_folder):
            stem = f"{sequence}_frame_{30 * i + 7:06d}"
            path = root / "rgb_anon" / folder / sequence / f"{stem}{ANON_IMAGE_SUFFIX}"
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
            if folder in labelled:
                ids = rng.choice(np.r_[0:34, 255], size).astype(np.uint8)
                Image.fromarray(ids).save(root / "gt" / folder / sequence / f"{stem}{ANON_LABEL_SUFFIX}")
            paths.append(path)
    return sorted(paths)


def write_tiny_acdc(root: str | Path, splits: Sequence[str] = ("train", "val", "test"), per_folder: int = 2,
                    size: tuple[int, int] = (16, 24), seed: int = 0) -> list[Path]:
    """Tiny ACDC: every condition x ``splits``; train and val labelled (as gt_trainval.zip), test not."""
    folders = [f"{c}/{s}" for c in ACDC_CONDITIONS for s in splits]
    return write_tiny_anon(root, folders, [f for f in folders if not f.endswith("/test")], per_folder, size, seed)


def write_tiny_darkzurich(root: str | Path, per_folder: int = 2, size: tuple[int, int] = (16, 24),
                          seed: int = 0) -> list[Path]:
    """Tiny Dark Zurich: unlabelled ``train/{day,twilight,night}``, labelled ``val/night``."""
    folders = [*(f"train/{t}" for t in DARKZURICH_TIMES), "val/night"]
    return write_tiny_anon(root, folders, ["val/night"], per_folder, size, seed)


def write_tiny_carla(root: str | Path, num: int = 3, size: tuple[int, int] = (16, 24), seed: int = 0,
                     tags: CarlaTags = "0.9.14") -> None:
    """Tiny CARLA frames in the raw layout: 4-channel ``rgb/NAME.png`` and ``semantic/NAME.png``
    as CARLA's ``save_to_disk`` writes them (BGRA). The red channel holds tags of the ``tags`` table (every tag in the
    first frame's first pixels, random tags after); green and blue hold random values (an instance camera's ids), so
    reading any channel but red is wrong."""
    root, rng = Path(root), np.random.default_rng(seed)
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    (root / "semantic").mkdir(parents=True, exist_ok=True)
    alpha = np.full(size, 255, np.uint8)
    for i in range(num):
        name = f"{1000 + 7 * i:08d}.png"  # CARLA names frames by their number
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        tag = rng.integers(0, TAG_COUNT[tags], size).astype(np.uint8)
        if i == 0:
            tag.reshape(-1)[: TAG_COUNT[tags]] = np.arange(TAG_COUNT[tags], dtype=np.uint8)
        noise = rng.integers(0, 256, (*size, 2), dtype=np.uint8)
        ok = cv2.imwrite(str(root / "rgb" / name), np.dstack([rgb[..., ::-1], alpha]))
        ok &= cv2.imwrite(str(root / "semantic" / name), np.dstack([noise[..., 0], noise[..., 1], tag, alpha]))
        if not ok:
            raise DataError(f"{root}: cannot write the tiny CARLA frames")


def write_folder_domain(root: str | Path, labels: Sequence[np.ndarray], images: Sequence[np.ndarray] | None = None,
                        num_classes: int = 3, seed: int = 0) -> list[str]:
    """A folder-format domain with the given uint8 [H, W] label maps (class ids 0..num_classes-1, 255 = ignore)
    and their uint8 [H, W, 3] images (random ones when None): ``images/NNN.png``, ``labels/NNN.png`` and a
    ``classes.yaml`` naming classes ``c0``, ``c1``, ... Returns the names, in order."""
    root, rng = Path(root), np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    names = [f"{i:03d}" for i in range(len(labels))]
    for k, (name, label) in enumerate(zip(names, labels)):
        image = images[k] if images is not None else rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(label.astype(np.uint8)).save(root / "labels" / f"{name}.png")
    classes = "\n".join(f"  - {{id: {c}, name: c{c}}}" for c in range(num_classes))
    (root / "classes.yaml").write_text(f"ignore_index: 255\nclasses:\n{classes}\n")
    return names
