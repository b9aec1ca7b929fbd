"""Domain randomization: albumentations pipelines on uint8 [H, W, 3] images and uint8 [H, W] masks.

A domain's training transform (``TrainTransform``, built by ``build_augment``) resizes first (deterministic), then
runs one albumentations pipeline seeded per sample: geometry (flip, affine) jointly on image and masks, then the
crop, so that the costlier photometric transforms run on the crop; photometric, noise, blur, weather and compression
transforms touch the image only. Pixels that geometry brings in from outside the image get mask value 255 (ignore)
and ``valid`` 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema

from adapt.data.labels import IGNORE_INDEX
from adapt.errors import DataError

PRESETS = ("none", "flip", "weak", "strong")
MAX_CROP_REDRAWS = 10  # mmseg's RandomCrop with cat_max_ratio: up to 10 checks, the 11th crop kept unchecked


def _geometry(preset: str) -> list[A.BasicTransform]:
    if preset == "none":
        return []
    ops: list[A.BasicTransform] = [A.HorizontalFlip(p=0.5)]
    if preset == "strong":
        ops.append(A.Affine(scale=(0.75, 1.25), rotate=(-5, 5), border_mode=cv2.BORDER_CONSTANT,
                            fill=0, fill_mask=IGNORE_INDEX, p=0.5))
    return ops


def _photometric(preset: str) -> list[A.BasicTransform]:
    if preset in ("none", "flip"):
        return []
    if preset == "weak":
        return [A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
                A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=15, val_shift_limit=10, p=0.3)]
    # strong: appearance changes of every kind a camera, a season or a renderer brings. RandomFog costs about
    # 1 s per 1024x2048 image, so it is one of four weather effects drawn with p=0.25: ~60 ms per image on average.
    return [
        A.OneOf([
            A.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.6, hue=0.15, p=1.0),
            A.HueSaturationValue(hue_shift_limit=40, sat_shift_limit=50, val_shift_limit=40, p=1.0),
            A.RGBShift(r_shift_limit=40, g_shift_limit=40, b_shift_limit=40, p=1.0),
            A.PlanckianJitter(p=1.0),
        ], p=0.9),
        A.RandomGamma(gamma_limit=(50, 180), p=0.5),
        A.RandomBrightnessContrast(brightness_limit=(-0.5, 0.2), contrast_limit=(-0.5, 0.3), p=0.5),
        A.ToGray(p=0.05),
        A.OneOf([
            A.GaussNoise(std_range=(0.02, 0.08), p=1.0),
            A.ISONoise(color_shift=(0.01, 0.05), intensity=(0.1, 0.5), p=1.0),
        ], p=0.5),
        A.OneOf([
            A.GaussianBlur(blur_limit=(3, 5), p=1.0),
            A.MotionBlur(blur_limit=(3, 7), p=1.0),
        ], p=0.4),
        A.OneOf([
            A.RandomFog(fog_coef_range=(0.1, 0.4), alpha_coef=0.08, p=1.0),
            A.RandomRain(rain_type="drizzle", brightness_coefficient=0.8, p=1.0),
            A.RandomShadow(p=1.0),
            A.Illumination(intensity_range=(0.05, 0.2), p=1.0),
        ], p=0.25),
        A.ImageCompression(quality_range=(30, 90), p=0.3),
        A.Downscale(scale_range=(0.5, 0.9), p=0.2),
    ]


def balanced(labels: np.ndarray, cat_max_ratio: float, ignore_index: int = IGNORE_INDEX) -> bool:
    """mmseg's test of a crop's labels (uint8 [h, w]): at least two classes (``ignore_index`` not counted), none
    of them holding ``cat_max_ratio`` or more of the counted pixels."""
    counts = np.bincount(labels.ravel(), minlength=256)
    counts = np.delete(counts, ignore_index)
    counts = counts[counts > 0]
    return len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio


class CatMaxRatioCrop(A.RandomCrop):
    """A random crop (padded with 0 / ignore where the image is smaller) drawn again while one class fills it:
    mmseg's ``RandomCrop(cat_max_ratio)``. Each of up to 10 crops whose labels fail ``balanced`` is replaced by a
    new draw; the 11th crop is kept unchecked. Without a mask, or with ``cat_max_ratio`` >= 1, one plain draw. The
    crops are drawn from the pipeline's own RNG (``Compose.set_random_seed``)."""

    class InitSchema(BaseTransformInitSchema):
        height: int
        width: int
        cat_max_ratio: float
        ignore_index: int

    def __init__(self, height: int, width: int, cat_max_ratio: float = 1.0, ignore_index: int = IGNORE_INDEX,
                 p: float = 1.0) -> None:
        super().__init__(height=height, width=width, pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT, fill=0,
                         fill_mask=ignore_index, p=p)
        self.cat_max_ratio, self.ignore_index = cat_max_ratio, ignore_index
        self.draws = 0  # crops drawn for the last sample (1 to 11)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        crop, self.draws = super().get_params_dependent_on_data(params, data), 1
        mask = data.get("mask")
        if mask is None or self.cat_max_ratio >= 1:
            return crop
        for _ in range(MAX_CROP_REDRAWS):
            if balanced(self.apply_to_mask(mask, **crop), self.cat_max_ratio, self.ignore_index):
                break
            crop, self.draws = super().get_params_dependent_on_data(params, data), self.draws + 1
        return crop

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return "height", "width", "cat_max_ratio", "ignore_index"


def keep_ratio_size(height: int, width: int, bounds: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an image rescaled by one factor, the largest that keeps its long side <= max(bounds) and
    its short side <= min(bounds), each side rounded as ``int(side * factor + 0.5)`` (mmcv's ``rescale_size``, as
    mmseg's ``Resize(keep_ratio=True)`` uses it): GTA5's 1052x1914 -> 704x1280 at (720, 1280)."""
    factor = min(max(bounds) / max(height, width), min(bounds) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def margins_mask(size: tuple[int, int], margins: tuple[int, int, int, int]) -> np.ndarray:
    """uint8 [H, W] of ``size``: 0 in the ``(top, bottom, left, right)`` margins (pixels), 1 elsewhere."""
    top, bottom, left, right = margins
    valid = np.zeros(size, np.uint8)
    valid[top:max(size[0] - bottom, 0), left:max(size[1] - right, 0)] = 1
    return valid


class TrainTransform:
    """One domain's training transform, called as ``transform(image=..., mask=...)`` (the mask optional) on uint8
    [H, W, 3] / [H, W] arrays; returns a dict with ``image``, ``mask`` (when given) and, with ``margins``, ``valid``.

    Steps: resize to ``resize`` (stretched: area for images; with ``keep_ratio``: one factor, ``keep_ratio_size``,
    bilinear as mmseg; nearest for masks); with ``margins`` the full-size ``valid`` mask (uint8 [h, w], 0 in the
    margins, ``margins_mask``); then ``pipeline`` (an albumentations ``Compose`` with ``valid`` as a mask target:
    it is cropped and flipped with the image; pixels brought in from outside the image get ``valid`` 0).
    ``set_random_seed`` seeds ``pipeline`` (the resize draws nothing).
    """

    def __init__(self, pipeline: A.Compose, resize: tuple[int, int] | None = None, keep_ratio: bool = False,
                 margins: tuple[int, int, int, int] | None = None) -> None:
        self.pipeline, self.resize, self.keep_ratio, self.margins = pipeline, resize, keep_ratio, margins

    def set_random_seed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)

    def resized(self, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """``image`` and ``mask`` at the training size (unchanged without ``resize``)."""
        if self.resize is None:
            return image, mask
        height, width = image.shape[:2]
        size = keep_ratio_size(height, width, self.resize) if self.keep_ratio else tuple(self.resize)
        if size == (height, width):
            return image, mask
        interpolation = cv2.INTER_LINEAR if self.keep_ratio else cv2.INTER_AREA
        image = cv2.resize(image, size[::-1], interpolation=interpolation)
        return image, None if mask is None else cv2.resize(mask, size[::-1], interpolation=cv2.INTER_NEAREST)

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        image, mask = self.resized(image, mask)
        data = {"image": image} if mask is None else {"image": image, "mask": mask}
        if self.margins is not None:
            data["valid"] = margins_mask(image.shape[:2], self.margins)
        out = self.pipeline(**data)
        if self.margins is not None:
            out["valid"] = (out["valid"] == 1).astype(np.uint8)  # padding and affine borders were filled with 255
        return out


def _user_pipeline(augment: str | dict[str, Any], key: str) -> A.BasicTransform:
    """An albumentations pipeline from a file or an inline description; DataError naming ``key`` if it is none."""
    if isinstance(augment, dict):
        try:
            return A.from_dict({"transform": augment})
        except Exception as err:  # albumentations raises several kinds on a bad description
            raise DataError(f"{key}: not a valid albumentations pipeline ({err}); "
                            "write it as A.to_dict(pipeline)['transform'] gives it") from None
    path = Path(augment)
    if not path.is_file():
        raise DataError(f"{key}: {augment!r} is neither a preset {PRESETS} nor an existing pipeline file")
    try:
        return A.load(str(path), data_format="yaml" if path.suffix in (".yaml", ".yml") else "json")
    except Exception as err:
        raise DataError(f"{key}: {path}: not a valid albumentations pipeline ({err}); save one with A.save()") \
            from None


def build_augment(augment: str | dict[str, Any] | None = "none", crop_size: tuple[int, int] | None = None,
                  resize: tuple[int, int] | None = None, keep_ratio: bool = False, cat_max_ratio: float = 1.0,
                  margins: tuple[int, int, int, int] | None = None,
                  key: str = "data.init_args.augment") -> TrainTransform:
    """The training transform of a domain.

    Args:
        augment: a preset (``none``; ``flip``: horizontal flip with p = 0.5 only, as DAFormer / HRDA / MIC on both
            domains; ``weak``: flip and mild colour changes; ``strong``: flip, affine and heavy appearance changes);
            a path to an albumentations pipeline saved with ``A.save(...)`` (``.yaml``/``.yml``/``.json``); or an
            inline pipeline as ``A.to_dict(...)["transform"]`` writes it
            (``{"__class_fullname__": "Compose", "transforms": [...]}``).
        crop_size: ``(height, width)`` of the random training crop (padded with 0 / ignore where the image is
            smaller), applied after the preset's geometry; the whole image when None.
        resize: ``(height, width)`` every image is resized to first; with ``keep_ratio`` the bounds of a one-factor
            rescale (``keep_ratio_size``: GTA5 at (720, 1280) -> 704x1280); no resizing when None.
        keep_ratio: keep the aspect ratio (mmseg's ``Resize``, bilinear) instead of stretching (area).
        cat_max_ratio: with a mask, a crop where one class holds this share or more of the labelled pixels, or
            with fewer than two classes, is drawn again (``CatMaxRatioCrop``; DAFormer: 0.75 on GTA5); 1 = off.
        margins: ``(top, bottom, left, right)`` pixels of the resized image whose pseudo-labels do not count: the
            transform then also returns ``valid`` (``TrainTransform``).
        key: the recipe key named in errors.
    """
    crop = [] if crop_size is None else [CatMaxRatioCrop(*crop_size, cat_max_ratio=cat_max_ratio)]
    if augment is None or augment in PRESETS:
        preset = augment or "none"
        ops = _geometry(preset) + crop + _photometric(preset)
    else:
        ops = [_user_pipeline(augment, key)] + crop
    targets = None if margins is None else {"valid": "mask"}
    return TrainTransform(A.Compose(ops, additional_targets=targets), resize, keep_ratio, margins)


def check_transform_args(resize: Any = None, target_resize: Any = None, cat_max_ratio: Any = 1.0,
                         pseudo_label_margins: Any = None) -> None:
    """DataError, naming the ``data.init_args`` key, for a resize that is not two positive sizes, a
    ``cat_max_ratio`` outside (0, 1] or margins that are not four pixel counts >= 0."""
    def counts(value: Any, length: int, least: int) -> bool:
        return (isinstance(value, (tuple, list)) and len(value) == length
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in value))

    for key, size in (("resize", resize), ("target_resize", target_resize)):
        if size is not None and not counts(size, 2, 1):
            raise DataError(f"data.init_args.{key}: {size!r}; give [height, width] in pixels (> 0), or null")
    if isinstance(cat_max_ratio, bool) or not isinstance(cat_max_ratio, (int, float)) or not 0 < cat_max_ratio <= 1:
        raise DataError(f"data.init_args.cat_max_ratio: {cat_max_ratio!r}; give a share in (0, 1] (1.0: off; "
                        "DAFormer / HRDA / MIC on GTA5: 0.75)")
    if pseudo_label_margins is not None and not counts(pseudo_label_margins, 4, 0):
        raise DataError(f"data.init_args.pseudo_label_margins: {pseudo_label_margins!r}; give [top, bottom, left, "
                        "right] in pixels >= 0 (HRDA / MIC: [30, 240, 30, 30]), or null")


def seed_augment(transform: Any, seed: int) -> None:
    """Seed an albumentations pipeline's own RNG (``seed_everything`` does not reach it)."""
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed % 2**32)
