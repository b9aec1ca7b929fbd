"""Domain randomization: albumentations pipelines on uint8 [H, W, 3] images and uint8 [H, W] masks.

Geometry (flip, affine, crop) is applied jointly to image and mask, first, so that the costlier photometric
transforms run on the crop; photometric, noise, blur, weather and compression transforms touch the image only.
Pixels that geometry brings in from outside the image get mask value 255 (ignore).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import albumentations as A
import cv2

from adapt.data.labels import IGNORE_INDEX
from adapt.errors import DataError

PRESETS = ("none", "weak", "strong")


def _geometry(preset: str) -> list[A.BasicTransform]:
    if preset == "none":
        return []
    ops: list[A.BasicTransform] = [A.HorizontalFlip(p=0.5)]
    if preset == "strong":
        ops.append(A.Affine(scale=(0.75, 1.25), rotate=(-5, 5), border_mode=cv2.BORDER_CONSTANT,
                            fill=0, fill_mask=IGNORE_INDEX, p=0.5))
    return ops


def _photometric(preset: str) -> list[A.BasicTransform]:
    if preset == "none":
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


def _crop(crop_size: tuple[int, int] | None) -> list[A.BasicTransform]:
    if crop_size is None:
        return []
    height, width = crop_size
    return [A.RandomCrop(height=height, width=width, pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT,
                         fill=0, fill_mask=IGNORE_INDEX, p=1.0)]


def _resize(resize: tuple[int, int] | None) -> list[A.BasicTransform]:
    if resize is None:
        return []
    return [A.Resize(height=resize[0], width=resize[1], interpolation=cv2.INTER_AREA,
                     mask_interpolation=cv2.INTER_NEAREST, p=1.0)]


def build_augment(augment: str | dict[str, Any] | None = "none", crop_size: tuple[int, int] | None = None,
                  resize: tuple[int, int] | None = None) -> A.Compose:
    """The training transform of a domain.

    Args:
        augment: a preset (``none``, ``weak``, ``strong``); a path to an albumentations pipeline saved with
            ``A.save(...)`` (``.yaml``/``.yml``/``.json``); or an inline pipeline as ``A.to_dict(...)["transform"]``
            writes it (``{"__class_fullname__": "Compose", "transforms": [...]}``).
        crop_size: ``(height, width)`` of the random training crop (padded with ignore where the image is
            smaller), applied after the preset's geometry; the whole image when None.
        resize: ``(height, width)`` every image is resized to first (area for images, nearest for masks), e.g.
            GTA5's 1052x1914 frames to 720x1280; no resizing when None.
    """
    crop, first = _crop(crop_size), _resize(resize)
    if augment is None or augment in PRESETS:
        preset = augment or "none"
        return A.Compose(first + _geometry(preset) + crop + _photometric(preset))
    if isinstance(augment, dict):
        try:
            pipeline = A.from_dict({"transform": augment})
        except Exception as err:  # albumentations raises several kinds on a bad description
            raise DataError(f"augment: not a valid albumentations pipeline ({err}); "
                            "write it as A.to_dict(pipeline)['transform'] gives it") from None
    else:
        path = Path(augment)
        if not path.is_file():
            raise DataError(f"augment: {augment!r} is neither a preset {PRESETS} nor an existing pipeline file")
        try:
            pipeline = A.load(str(path), data_format="yaml" if path.suffix in (".yaml", ".yml") else "json")
        except Exception as err:
            raise DataError(f"{path}: not a valid albumentations pipeline ({err}); save one with A.save()") from None
    return A.Compose(first + [pipeline] + crop)


def seed_augment(transform: Any, seed: int) -> None:
    """Seed an albumentations pipeline's own RNG (``seed_everything`` does not reach it)."""
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed % 2**32)
