"""Inference: how an image of any size becomes logits at its own resolution, under an explicit protocol.

``make_protocol`` builds the checked protocol dict written into every metrics.json; ``predict`` applies it (whole
image, resized, or sliding windows). ``pad_to_multiple`` is the one padding helper of the package: F and the
CycleGAN generator need sides that are multiples of their stride, and pad right / bottom, then crop back.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as nnf

from adapt.errors import ConfigError

# ``--accelerator`` of the verbs that run a network outside a Trainer (predict, tta, translate, data gap)
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
DEVICES = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "mps": "mps"}


def pad_to_multiple(x: torch.Tensor, multiple: int, minimum: int = 1, mode: str = "replicate") -> torch.Tensor:
    """Pad float [B, C, H, W] right and bottom to sides that are multiples of ``multiple`` and at least
    ``minimum * multiple``. ``mode``: ``replicate``, or ``reflect`` (falls back to ``replicate`` where the image is
    too small to reflect). Crop the result of a network back with ``[..., :H, :W]``."""
    height, width = x.shape[-2:]
    pad_h = max(-(-height // multiple), minimum) * multiple - height
    pad_w = max(-(-width // multiple), minimum) * multiple - width
    if not (pad_h or pad_w):
        return x
    if mode == "reflect" and not (pad_h < height and pad_w < width):
        mode = "replicate"
    return nnf.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def crop_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """float [B, C, H, W] -> the top-left crop to multiples of ``multiple`` (where no padding may enter, as in
    BatchNorm statistics)."""
    return x[..., : x.shape[-2] // multiple * multiple, : x.shape[-1] // multiple * multiple]


def predict_padded(segmenter: torch.nn.Module, image: torch.Tensor, multiple: int | None = None) -> torch.Tensor:
    """Logits for a whole image of any size: pad right/bottom (replicate) to a multiple of ``multiple`` (None:
    the segmenter's ``output_stride``, else 32), run, crop back. float [B, 3, H, W] in [0, 1] -> float [B, C, H, W]."""
    height, width = image.shape[-2:]
    multiple = multiple or getattr(segmenter, "output_stride", 32)
    return segmenter(pad_to_multiple(image, multiple))[..., :height, :width]


PROTOCOL_MODES = ("full", "resize", "slide")


def make_protocol(mode: str = "full", size: tuple[int, int] | None = None, window: tuple[int, int] | None = None,
                  stride: tuple[int, int] | None = None) -> dict:
    """A checked protocol dict, as written into every metrics.json:

    - ``{"mode": "full"}``: the whole image, padded to a multiple of F's output stride, logits cropped back;
    - ``{"mode": "resize", "size": [H, W]}``: the input resized (bilinear) to ``size``, the logits resized back
      (bilinear) to the label resolution before the argmax;
    - ``{"mode": "slide", "window": [H, W], "stride": [H, W]}``: windows over the full-resolution image (the last
      one aligned to the border; ``stride`` defaults to half the window), overlapping logits averaged.

    A ``description`` in words is added. ValueError naming the option on a bad combination.
    """
    def pair(name: str, value) -> list[int]:
        if value is None or len(value) != 2 or min(int(v) for v in value) < 1:
            raise ValueError(f"protocol {mode}: --{name} needs two positive integers H W, got {value}")
        return [int(v) for v in value]

    extra = {k: v for k, v in (("size", size), ("window", window), ("stride", stride)) if v is not None}
    allowed = {"full": set(), "resize": {"size"}, "slide": {"window", "stride"}}
    if mode not in allowed:
        raise ValueError(f"protocol {mode!r}: choose one of {', '.join(PROTOCOL_MODES)}")
    if set(extra) - allowed[mode]:
        raise ValueError(f"protocol {mode}: --{sorted(set(extra) - allowed[mode])[0]} does not apply "
                         f"(resize takes --size; slide takes --window and --stride)")
    if mode == "full":
        return {"mode": "full", "description": "whole image at its own resolution, padded (replicate) to a "
                                               "multiple of F's output stride (32; a ViT's patch size) and "
                                               "cropped back; labels at full resolution"}
    if mode == "resize":
        size = pair("size", size)
        return {"mode": "resize", "size": size, "description": f"input resized (bilinear) to {size[0]}x{size[1]}, "
                "logits resized (bilinear) back to the full label resolution before the argmax"}
    window = pair("window", window)
    stride = pair("stride", stride) if stride is not None else [max(w // 2, 1) for w in window]
    if stride[0] > window[0] or stride[1] > window[1]:
        raise ValueError(f"protocol slide: --stride {stride} larger than --window {window} leaves pixels unseen")
    return {"mode": "slide", "window": window, "stride": stride,
            "description": f"sliding {window[0]}x{window[1]} windows, stride {stride[0]}x{stride[1]}, over the "
                           "full-resolution image (last window aligned to the border); overlapping logits averaged"}


def predict_resize(segmenter: torch.nn.Module, image: torch.Tensor, size: tuple[int, int],
                   multiple: int | None = None) -> torch.Tensor:
    """float [B, 3, H, W] -> logits float [B, C, H, W] computed at ``size`` = (h, w) (bilinear both ways)."""
    height, width = image.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if size != (height, width):
        image = nnf.interpolate(image, size=size, mode="bilinear", align_corners=False)
    logits = predict_padded(segmenter, image, multiple)
    if size != (height, width):
        logits = nnf.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` every ``stride`` over ``length``, the last one ending at the border
    (one window at 0 when ``window >= length``)."""
    if window >= length:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def predict_slide(segmenter: torch.nn.Module, image: torch.Tensor, window: tuple[int, int],
                  stride: tuple[int, int], multiple: int | None = None) -> torch.Tensor:
    """float [B, 3, H, W] -> logits float [B, C, H, W]: the sum of the (padded) logits of every window covering a
    pixel divided by their count. A window larger than the image shrinks to the image."""
    height, width = image.shape[-2:]
    win_h, win_w = min(int(window[0]), height), min(int(window[1]), width)
    total, count = None, image.new_zeros(1, 1, height, width)
    for top in window_starts(height, win_h, int(stride[0])):
        for left in window_starts(width, win_w, int(stride[1])):
            logits = predict_padded(segmenter, image[..., top:top + win_h, left:left + win_w], multiple)
            if total is None:
                total = logits.new_zeros(*logits.shape[:2], height, width)
            total[..., top:top + win_h, left:left + win_w] += logits
            count[..., top:top + win_h, left:left + win_w] += 1
    return total / count


def predict(segmenter: torch.nn.Module, image: torch.Tensor, protocol: dict | None = None,
            multiple: int | None = None) -> torch.Tensor:
    """Logits at the input's resolution under ``protocol`` (see ``make_protocol``; None = full), padded to
    multiples of ``multiple`` (None: the segmenter's ``output_stride``, else 32).
    float [B, 3, H, W] in [0, 1] -> float [B, C, H, W]."""
    mode = (protocol or {}).get("mode", "full")
    if mode == "full":
        return predict_padded(segmenter, image, multiple)
    if mode == "resize":
        return predict_resize(segmenter, image, protocol["size"], multiple)
    if mode == "slide":
        return predict_slide(segmenter, image, protocol["window"], protocol["stride"], multiple)
    raise ValueError(f"protocol {mode!r}: choose one of {', '.join(PROTOCOL_MODES)}")


def torch_device(accelerator: str) -> torch.device:
    """The torch device of ``--accelerator`` (auto: cuda when available, else cpu); a ConfigError when it is not
    available here."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = DEVICES.get(accelerator)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if name is None or not available[name]:
        raise ConfigError(f"--accelerator: {accelerator} is not available on this machine; use auto or cpu")
    return torch.device(name)


def report_sample(x_t: torch.Tensor, pred_t: torch.Tensor, y_t: torch.Tensor, x_ts: torch.Tensor | None,
                  max_side: int = 1024) -> dict:
    """One sample for a report, on the CPU and subsampled to at most ``max_side`` pixels a side: ``x_t`` (and
    ``x_ts``) uint8 [H, W, 3], ``pred_t`` and ``y_t`` uint8 [H, W] train indices (255 = ignore)."""
    step = -(-max(x_t.shape[-2:]) // max_side)

    def image(x: torch.Tensor):
        return (x[:, ::step, ::step].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()

    def label(y: torch.Tensor):
        return y[::step, ::step].clamp(0, 255).byte().cpu().numpy()

    return {"x_t": image(x_t), "pred_t": label(pred_t), "y_t": label(y_t),
            "x_ts": None if x_ts is None else image(x_ts)}
