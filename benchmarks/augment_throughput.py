"""Decode + domain randomization throughput of one DataLoader worker, per DR preset, at Cityscapes-like sizes.

Writes ``--images`` street scenes from the synthetic renderer (PNG images, like Cityscapes and GTA5, and PNG labels)
at each size into a temporary folder dataset, then times ``FolderDataset[i]`` in this process (one worker does
exactly this): PNG decode of image and label, label lookup, the preset's albumentations pipeline on the full image
(no crop) and the conversion to a float tensor. Each sample gets its own seed, as in training. The median of
``--repeats`` passes is reported as images/s per worker; a loader with W workers peaks near W times that.

    python benchmarks/augment_throughput.py --output benchmarks/results/augment_throughput.txt
                                # 512x1024 and 1024x2048, presets none/weak/strong; the table also goes to --output
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from record import write_result

from adapt.data.augment import PRESETS, build_augment
from adapt.data.folder import FolderDataset
from adapt.data.sampling import sample_seed
from adapt.data.synthetic import CLASS_NAMES, render_image, render_layout


def write_folder(root: Path, count: int, size: tuple[int, int]) -> None:
    """A folder dataset of ``count`` rendered scenes at ``size`` (rendered small, resized up: fast to make)."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    classes = [{"id": i, "name": name} for i, name in enumerate(CLASS_NAMES)]
    (root / "classes.yaml").write_text(yaml.safe_dump({"classes": classes}, sort_keys=False))
    rng = np.random.default_rng(0)
    for i in range(count):
        label = render_layout(rng, (size[0] // 4, size[1] // 4))
        image = render_image(label, "target", rng)
        label = cv2.resize(label, size[::-1], interpolation=cv2.INTER_NEAREST)
        image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(root / "images" / f"{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "labels" / f"{i:03d}.png"), label)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512x1024,1024x2048", help="comma-separated HxW")
    parser.add_argument("--images", type=int, default=8, help="distinct images per size")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the images per preset")
    parser.add_argument("--output", default=None, help="also write the table to this result file")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # a DataLoader worker: one core
    lines = [f"one worker (cv2 threads 1), {args.images} PNG images per size (rendered synthetic scenes), median of "
             f"{args.repeats} passes", f"{'size':>10s} {'preset':>7s} {'images/s':>9s} {'ms/image':>9s}"]
    print("\n".join(lines))
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.sizes.split(","):
            size = tuple(int(v) for v in text.lower().split("x"))
            root = Path(tmp) / text
            write_folder(root, args.images, size)
            for preset in PRESETS:
                dataset = FolderDataset(root, transform=build_augment(preset, None, None))
                rates = []
                for epoch in range(args.repeats):
                    start = time.perf_counter()
                    for i in range(len(dataset)):
                        dataset[(i, sample_seed(0, 0, epoch, i))]
                    rates.append(len(dataset) / (time.perf_counter() - start))
                rate = statistics.median(rates)
                lines.append(f"{text:>10s} {preset:>7s} {rate:9.2f} {1000 / rate:9.1f}")
                print(lines[-1], flush=True)
    if args.output:
        write_result(args.output, "\n".join(lines))


if __name__ == "__main__":
    main()
