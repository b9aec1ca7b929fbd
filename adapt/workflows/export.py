"""``adapt export``: a trained F, or F(T(x)) with a CycleGAN translator, as one ONNX file that runs without Python.

The graph takes what F takes and gives what ``adapt evaluate`` (full protocol) computes: float32 RGB images
[B, 3, H, W] in [0, 1] of any batch and size in, logits float32 [B, C, H, W] at the input's size out. F's input
normalisation (its ``mean`` / ``std`` buffers) and the padding of ``predict_padded`` (right / bottom, replicate, to
a multiple of F's output stride, 32 or a ViT's patch size, cropped back) are inside the graph; with a translator,
so are ``translate_padded``'s (reflect, to a multiple of the generator's stride and at least twice it) and T's
[0, 1] <-> [-1, 1] conversions.

The exporter is torch's TorchScript-based one (``dynamo=False``): tracing records the shape arithmetic, so the pad
amounts follow each input's size; the torch.export-based one gives the same outputs here, about twenty times
slower. Beside ``OUTPUT`` a JSON file (``OUTPUT`` with suffix ``.json``) says what goes in and out: class names,
palette, ignore index, opset, the source checkpoints and their recipes' sha256.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as nnf

from adapt.checkpoints import (
    load_checkpoint,
    load_segmenter,
    load_translator,
)
from adapt.data.cityscapes import class_palette
from adapt.errors import ConfigError
from adapt.files import atomic_write
from adapt.inference import predict
from adapt.nets.fourier import FourierTranslator
from adapt.nets.segmenter import Segmenter
from adapt.nets.translator import ResnetGenerator, translate_padded
from adapt.report import write_json

TRACE_SHAPE = (1, 3, 64, 64)  # the example input the exporter traces
CHECK_SHAPE = (2, 3, 45, 77)  # the onnxruntime check: another batch, sides that are not multiples of 32
CHECK_TOLERANCE = 1e-4  # largest |ONNX - PyTorch| of a logit the check accepts
OPSETS = (11, 20)  # dynamic Pad and Resize inputs need 11; the TorchScript-based exporter writes up to 20
INPUT_SPEC = "float32 [B,3,H,W] RGB in [0,1]"
OUTPUT_SPEC = "float32 [B,C,H,W] logits at the input's H and W, C = len(class_names); argmax over C = class index"


def _at_least(value, floor: int):
    """max(value, floor) for an int or a traced 0-dim tensor (``abs`` keeps the trace; ``max`` would not)."""
    return (value + floor + abs(value - floor)) // 2


def pad_dynamic(x: torch.Tensor, multiple: int, minimum: int, mode: str) -> torch.Tensor:
    """``pad_to_multiple`` with pad amounts an ONNX trace computes from the input's shape: float [B, C, H, W] ->
    padded right and bottom to sides ``max(ceil(side / multiple), minimum) * multiple``. ``mode``: ``replicate``
    or ``reflect`` (no fallback: reflect needs pads smaller than the sides)."""
    height, width = x.shape[-2], x.shape[-1]
    pad_h = _at_least((height + multiple - 1) // multiple, minimum) * multiple - height
    pad_w = _at_least((width + multiple - 1) // multiple, minimum) * multiple - width
    return nnf.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class ExportGraph(nn.Module):
    """What is exported: F, after g_ts when given, each padded and cropped back as ``adapt evaluate`` runs them.

    ``forward``: float [B, 3, H, W] RGB in [0, 1] -> logits float [B, C, H, W]. With a generator, H and W >= 5
    (``translate_padded`` switches to replicate padding below that; the graph keeps reflect).
    """

    def __init__(self, segmenter: Segmenter, generator: ResnetGenerator | None = None) -> None:
        super().__init__()
        self.segmenter, self.generator = segmenter, generator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2], image.shape[-1]
        if self.generator is not None:  # x_ts = g_ts(x_t), target content in source style
            image = self.generator(pad_dynamic(image, self.generator.multiple, 2, "reflect"))[..., :height, :width]
        padded = pad_dynamic(image, self.segmenter.output_stride, 1, "replicate")
        return self.segmenter(padded)[..., :height, :width]


def recipe_hash(ckpt: dict, path: str | Path, role: str) -> dict:
    """``{"role", "checkpoint", "recipe_sha256", "hashed"}`` for one source checkpoint (``ckpt``, read from
    ``path``): the sha256 of the recipe text ``adapt fit`` records in it (``checkpoint["adapt"]["recipe"]``,
    ``hashed: recipe``), or, in a checkpoint without one, of its hyper-parameters as sorted JSON (``hashed:
    hyper_parameters``)."""
    recipe = (ckpt.get("adapt") or {}).get("recipe")
    hashed = "recipe" if isinstance(recipe, str) and recipe else "hyper_parameters"
    hparams = json.dumps(dict(ckpt.get("hyper_parameters") or {}), sort_keys=True, default=str)
    text = recipe if hashed == "recipe" else hparams
    return {"role": role, "checkpoint": str(path), "recipe_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "hashed": hashed}


def _require_onnx() -> tuple:
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        raise ConfigError(f"adapt export needs onnx and onnxruntime ({err.name} is missing); install them with "
                          "pip install adapt-seg[export]") from None
    return onnx, onnxruntime


def _export_bytes(graph: ExportGraph, opset: int) -> bytes:
    """The ONNX model of ``graph`` (serialized), batch, height and width dynamic."""
    buffer = io.BytesIO()
    example = torch.rand(TRACE_SHAPE, generator=torch.Generator().manual_seed(0))
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shapes and the legacy exporter's deprecation
        try:
            torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["logits"], do_constant_folding=True,
                              dynamic_axes={"image": axes, "logits": axes})
        except (RuntimeError, ValueError, TypeError) as err:  # an operator it cannot write (OnnxExporterError...)
            message = " ".join(str(err).split())[:300]
            raise ConfigError(f"adapt export: torch.onnx could not export the model at --opset {opset} "
                              f"({type(err).__name__}: {message}); try another --opset") from None
    return buffer.getvalue()


def _check(model: bytes, graph: ExportGraph, onnx, onnxruntime) -> dict:
    """Run ``model`` in onnxruntime at ``CHECK_SHAPE`` against PyTorch as ``adapt evaluate`` runs F (and g_ts);
    a ConfigError when the logits differ by more than ``CHECK_TOLERANCE``. Returns what was checked."""
    try:
        onnx.checker.check_model(onnx.load_from_string(model))
    except onnx.checker.ValidationError as err:
        raise ConfigError(f"adapt export: the exported graph is not valid ONNX ({' '.join(str(err).split())}); "
                          "nothing was written") from None
    image = torch.rand(CHECK_SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = translate_padded(graph.generator, image) if graph.generator is not None else image
        expected = predict(graph.segmenter, x, None, graph.segmenter.output_stride).numpy()
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    found = session.run(None, {"image": image.numpy()})[0]
    difference = float(np.abs(found - expected).max()) if found.shape == expected.shape else float("inf")
    if not difference <= CHECK_TOLERANCE:
        raise ConfigError(f"adapt export: onnxruntime's logits {list(found.shape)} differ from PyTorch's "
                          f"{list(expected.shape)} by up to {difference:.3g} (> {CHECK_TOLERANCE}) on a "
                          f"{list(CHECK_SHAPE)} input; nothing was written; try another --opset")
    return {"shape": list(CHECK_SHAPE), "max_abs_difference": difference, "tolerance": CHECK_TOLERANCE,
            "runtime": f"onnxruntime {onnxruntime.__version__}"}


def export_onnx(checkpoint: str, output: str, translator: str | None = None, opset: int = 18, check: bool = True,
                weights_only: bool = True) -> dict:
    """Export F (with ``translator``: F(g_ts(x))) to ONNX, with a JSON description of its input and output.

    The graph: float32 RGB images [B, 3, H, W] in [0, 1] (any batch and size) -> logits float32 [B, C, H, W] at
    the input's size, as ``adapt evaluate --protocol full`` computes them (normalisation and padding inside).
    ``OUTPUT`` and ``OUTPUT`` with suffix ``.json`` are written atomically, after the check. Returns the JSON
    record with ``output`` and ``metadata`` (the two paths).

    Args:
        checkpoint: an F .ckpt written by ``adapt fit`` (segmentation or self-training).
        output: the .onnx file to write (a new file; its .json sidecar must not exist either).
        translator: a CycleGAN translator .ckpt (``adapt fit`` of a translation recipe): export F(g_ts(x)), target
            images mapped to source style first (with it, H and W must be at least 5). FDA translators cannot be
            exported.
        opset: the ONNX opset to write (11 to 20).
        check: run the file once in onnxruntime at a size other than the traced one; refuse to write it if its
            logits differ from PyTorch's by more than 1e-4.
        weights_only: read checkpoints as tensors and plain values only; false runs the pickled code a checkpoint
            may hold: only for files you trust.
    """
    output = Path(output)
    metadata = output.with_suffix(".json")
    if metadata == output:
        raise ConfigError(f"--output: {output} ends in .json, the name of its description; give a .onnx file")
    for path in (output, metadata):
        if path.exists():
            raise ConfigError(f"--output: {path} exists; give a new file name (nothing is overwritten)")
    if not OPSETS[0] <= opset <= OPSETS[1]:
        raise ConfigError(f"--opset {opset}: give an ONNX opset from {OPSETS[0]} to {OPSETS[1]} (default 18)")
    onnx, onnxruntime = _require_onnx()
    loaded = load_segmenter(checkpoint, "--checkpoint", weights_only)
    segmenter = loaded.segmenter
    if segmenter.multi_resolution is not None:
        raise ConfigError(f"--checkpoint: {checkpoint} is an HRDA (multi-resolution) F, whose sliding detail windows "
                          "follow the image size, which a traced ONNX graph cannot; evaluate or predict it in Python")
    sources = [recipe_hash(loaded.checkpoint, checkpoint, "segmenter")]
    generator = None
    if translator is not None:
        generator = load_translator(translator, "target-to-source")
        if isinstance(generator, FourierTranslator):
            raise ConfigError(f"--translator: {translator} is an FDA translator (adapt fda), which cannot be exported "
                              "(random reference draws, FFTs); export F alone and apply FDA in Python")
        sources.append(recipe_hash(load_checkpoint(translator, "--translator", mmap=True), translator,
                                   "translator (g_ts, target-to-source)"))
    graph = ExportGraph(segmenter.requires_grad_(False), generator).eval()
    model = _export_bytes(graph, opset)
    checked = _check(model, graph, onnx, onnxruntime) if check else None
    names = loaded.class_names
    record = {"format": "onnx", "model": output.name, "graph": "F(g_ts(x))" if generator is not None else "F(x)",
              "input_name": "image", "input": INPUT_SPEC, "min_side": 5 if generator is not None else 1,
              "output_name": "logits", "output": OUTPUT_SPEC, "class_names": names,
              "palette": class_palette(names).tolist(), "ignore_index": loaded.ignore_index, "opset": opset,
              "exporter": f"torch.onnx (TorchScript-based), torch {torch.__version__}", "sources": sources,
              "checked": checked, "onnx_sha256": hashlib.sha256(model).hexdigest()}
    atomic_write(output, lambda f: f.write(model))
    write_json(metadata, record)
    return dict(record, output=str(output), metadata=str(metadata))
