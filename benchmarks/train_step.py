"""Training-step throughput: adapt's SegmentationTask under Lightning vs a plain PyTorch loop, same model and data.

Both sides train F (``build_segmenter``) with AdamW and the poly schedule on the same in-memory batches (one
DataLoader over the same tensors, no workers), the same number of steps, from the same initial weights. adapt's side
is ``Trainer.fit`` on ``SegmentationTask`` as a recipe runs it (CSV logger, logging every 10 steps, ``adapt fit``'s
run guard (``adapt.callbacks.run_guard``: a finite-loss check per step, run.json, epoch-end checkpoints) and atomic
checkpoint writes, checkpoint at the end, not timed), without
the progress bar (a terminal display); the plain loop is the textbook ``zero_grad / forward / cross_entropy /
backward / step``. Timing starts after ``--warmup`` steps and stops after ``--steps`` more, on both sides; runs
alternate (plain, adapt, plain, ...) so that machine noise hits both, each in a fresh process (so that no run
inherits another's memory or threads); the medians over ``--repeats`` pairs are reported.

    python benchmarks/train_step.py                       # CPU defaults: FPN-R18, batch 4, 256x512
    python benchmarks/train_step.py --batch_size 8 --size 64 128 --steps 40 --warmup 5 \
        --output benchmarks/results/train_step.txt        # short steps: a fixed per-step cost would show
    python benchmarks/train_step.py --device cuda --batch_size 8 --size 512 1024 --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import pytorch_lightning as pl
import torch
from torch.nn import functional as nnf
from torch.utils.data import DataLoader, Dataset

from record import write_result
from adapt.callbacks import AtomicCheckpointIO, run_guard
from adapt.cli import quiet_lightning
from adapt.nets.segmenter import build_segmenter
from adapt.tasks import SegmentationTask

CLASSES = [f"class{i}" for i in range(19)]


class Batches(Dataset):
    """``count`` fixed samples: image float [3, H, W] in [0, 1], mask int64 [H, W] in 0..18 with some 255."""

    def __init__(self, count: int, size: tuple[int, int]) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(count, 3, *size, generator=g)
        self.masks = torch.randint(0, len(CLASSES), (count, *size), generator=g)
        self.masks[:, : size[0] // 8] = 255

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "mask": self.masks[i]}


class Data(pl.LightningDataModule):
    def __init__(self, loader: DataLoader) -> None:
        super().__init__()
        self.loader = loader

    def train_dataloader(self):
        return {"source": self.loader}


class Clock(pl.Callback):
    """Seconds from the start of step ``warmup`` to the end of step ``warmup + steps - 1``."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device, self.seconds = warmup, steps, device, None

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.start = self._sync()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup + self.steps:
            self.seconds = self._sync() - self.start


def plain_loop(args, loader: DataLoader, device: torch.device, total: int) -> float:
    torch.manual_seed(0)
    model = build_segmenter(args.arch, args.encoder_name, None, num_classes=len(CLASSES)).to(device)
    if args.channels_last:
        model.to_channels_last()
    if args.compile:
        model.compile(**({} if args.compile == "inductor" else {"backend": args.compile}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    poly = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=0.9)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    model.train()
    step, start = 0, None
    while step < total:
        for batch in loader:
            if step == args.warmup:
                start = _now(device)
            x, y = batch["image"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = model(x)
            loss = nnf.cross_entropy(logits.float(), y, ignore_index=255)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            poly.step()
            step += 1
            if step == total:
                break
    return _now(device) - start


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def adapt_fit(args, loader: DataLoader, device: torch.device, total: int) -> float:
    torch.manual_seed(0)
    task = SegmentationTask(args.arch, args.encoder_name, None, CLASSES, lr=1e-3, weight_decay=1e-4,
                            channels_last=args.channels_last,
                            compile=False if not args.compile else True if args.compile == "inductor" else args.compile)
    clock = Clock(args.warmup, args.steps, device)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(accelerator=device.type, devices=1, precision=args.precision, max_steps=total,
                             default_root_dir=root, callbacks=[clock, *run_guard()], log_every_n_steps=10,
                             plugins=[AtomicCheckpointIO()], enable_model_summary=False,
                             enable_progress_bar=False, num_sanity_val_steps=0)
        trainer.fit(task, datamodule=Data(loader))
    return clock.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="fpn")
    parser.add_argument("--encoder_name", default="resnet18")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    parser.add_argument("--steps", type=int, default=15, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="(plain, adapt) pairs")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed", "16-mixed"))
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--compile", help="torch.compile F with this backend on both sides (inductor, eager...)")
    parser.add_argument("--output", default=None, help="also write the runs and medians to this result file")
    parser.add_argument("--only", choices=("plain", "adapt"), help=argparse.SUPPRESS)  # one run (a child process)
    args = parser.parse_args()
    quiet_lightning()
    device = torch.device(args.device)
    total = args.warmup + args.steps
    if args.only:
        data = Batches(args.batch_size * total, tuple(args.size))  # one epoch: no epoch-end work (checkpoint) timed
        loader = DataLoader(data, batch_size=args.batch_size, shuffle=False, drop_last=True,
                            pin_memory=device.type == "cuda")
        seconds = (plain_loop if args.only == "plain" else adapt_fit)(args, loader, device, total)
        print(f"RATE {args.steps * args.batch_size / seconds}")
        return
    lines = [f"{args.arch}-{args.encoder_name}, batch {args.batch_size} x {args.size[0]}x{args.size[1]}, "
             f"{args.precision}{', channels_last' if args.channels_last else ''}"
             f"{f', compiled ({args.compile})' if args.compile else ''}, {device}, "
             f"torch threads {torch.get_num_threads()}; {args.steps} timed steps after {args.warmup}; "
             "each run in a fresh process"]
    print(lines[0])
    rates: dict[str, list[float]] = {"plain": [], "adapt": []}
    for repeat in range(args.repeats):
        for name in ("plain", "adapt"):
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", name], capture_output=True,
                                 text=True, check=True).stdout
            rates[name].append(float(next(line for line in out.splitlines() if line.startswith("RATE ")).split()[1]))
            lines.append(f"  repeat {repeat + 1} {name:5s}: {rates[name][-1]:8.2f} images/s")
            print(lines[-1], flush=True)
    plain, adapt = statistics.median(rates["plain"]), statistics.median(rates["adapt"])
    pairs = [a / p for a, p in zip(rates["adapt"], rates["plain"])]
    lines.append(f"median images/s: plain loop {plain:.2f}, adapt {adapt:.2f}; ratio of medians "
                 f"{adapt / plain:.3f}, median of per-repeat ratios {statistics.median(pairs):.3f}")
    print(lines[-1])
    if args.output:
        write_result(args.output, "\n".join(lines))


if __name__ == "__main__":
    main()
