"""The GPU check: one command, one table, at most about eight minutes on one GPU.

1. Throughput: images/s of adapt's training step (``SegmentationTask`` under ``Trainer.fit`` with adapt's run
   guard, as ``adapt fit`` runs it) against a plain PyTorch loop (same model, batches, optimizer and schedule;
   ``benchmarks/train_step.py``'s two sides), the ratio, and the peak GPU memory of each side, for DeepLabV3+-R101 and
   SegFormer-MiT-B5 with DAFormer's decoder at 512x512 crops: batch 2 and 8, fp32 and bf16-mixed, channels_last off
   and on; ``torch.compile`` (inductor) on for the batch-8 bf16 channels_last setting of each model (compiling
   every setting would not fit the time). Each setting runs in a fresh process, alternating plain and adapt
   ``--repeats`` times (compiled settings once: each side compiles its own F); medians are reported, with each
   row's wall time. Weights are random (no hub): speed does not depend on them. The eight minutes are a design
   target (3 + 10 steps per run, 2 pairs per setting), not yet timed on a GPU: the total is printed.
2. The MIC recipe (``recipes/gta5_to_cityscapes/mic.yaml``: DAFormer + HRDA + MIC) for ``--mic_steps`` iterations
   (100) on a synthetic tree in the GTA5 and Cityscapes layouts at full resolution (1914x1052 and 2048x1024 frames),
   then ``adapt evaluate`` with the sliding-window protocol on its Cityscapes val images: finite losses (the run
   guard stops on a non-finite one), a checkpoint, metrics written. Its wall time, the fit's peak GPU memory, and
   its energy per 100 iterations from its run record (``run.json``'s ``cost``: codecarbon, the whole machine).

    python benchmarks/gpu_check.py --output benchmarks/results/gpu_check.txt   # on one GPU; the table to a file too
    python benchmarks/gpu_check.py --dry-run    # the same code on CPU at tiny sizes (tests/test_gpu_check.py)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT = 300  # seconds for one setting or the MIC check: a hung child must not eat a GPU lease
MODELS = {"DeepLabV3+-R101": ("deeplabv3plus", "resnet101"), "SegFormer-B5 + DAFormer": ("daformer", "mit_b5")}
DRY_MODELS = {"DeepLabV3+-R18 (dry)": ("deeplabv3plus", "resnet18"), "SegFormer-B0 + DAFormer (dry)": ("daformer",
                                                                                                          "mit_b0")}


def settings(dry_run: bool) -> list[dict]:
    """The throughput grid: one dict per setting (model, arch, encoder_name, batch_size, size, precision,
    channels_last, compile). The dry run keeps one setting per model that together touch every option."""
    if dry_run:
        (a, (arch_a, enc_a)), (b, (arch_b, enc_b)) = DRY_MODELS.items()
        return [dict(model=a, arch=arch_a, encoder_name=enc_a, batch_size=2, size=64, precision="32-true",
                     channels_last=False, compile=None),
                dict(model=b, arch=arch_b, encoder_name=enc_b, batch_size=2, size=64, precision="bf16-mixed",
                     channels_last=True, compile="eager")]
    grid = [dict(model=name, arch=arch, encoder_name=encoder, batch_size=batch, size=512, precision=precision,
                 channels_last=channels_last, compile=None)
            for name, (arch, encoder) in MODELS.items() for batch in (2, 8)
            for precision in ("32-true", "bf16-mixed") for channels_last in (False, True)]
    return grid + [dict(model=name, arch=arch, encoder_name=encoder, batch_size=8, size=512, precision="bf16-mixed",
                        channels_last=True, compile="inductor") for name, (arch, encoder) in MODELS.items()]


def measure(setting: dict, device: str, warmup: int, steps: int, repeats: int) -> dict:
    """Run one setting in this process: plain and adapt alternately ``repeats`` times. Returns median images/s and
    peak memory (MiB; None off CUDA) of each side."""
    import torch
    from torch.utils.data import DataLoader

    sys.path.insert(0, str(REPO / "benchmarks"))
    from train_step import Batches, adapt_fit, plain_loop

    from adapt.cli import quiet_lightning

    quiet_lightning()
    args = argparse.Namespace(warmup=warmup, steps=steps, **{k: setting[k] for k in (
        "arch", "encoder_name", "precision", "channels_last", "compile")})
    total = warmup + steps
    data = Batches(setting["batch_size"] * total, (setting["size"], setting["size"]))
    loader = DataLoader(data, batch_size=setting["batch_size"], drop_last=True, pin_memory=device == "cuda")
    cuda = device == "cuda"
    rates: dict[str, list[float]] = {"plain": [], "adapt": []}
    peaks: dict[str, int | None] = {"plain": None, "adapt": None}
    for _ in range(repeats):
        for side, run in (("plain", plain_loop), ("adapt", adapt_fit)):
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            seconds = run(args, loader, torch.device(device), total)
            rates[side].append(steps * setting["batch_size"] / seconds)
            if cuda:
                peaks[side] = max(peaks[side] or 0, torch.cuda.max_memory_allocated() // 2**20)
    return {side: {"images_per_s": statistics.median(r), "peak_mib": peaks[side]} for side, r in rates.items()}


def mic_check(dry_run: bool, steps: int, work: Path, device: str) -> dict:
    """The MIC recipe for ``steps`` iterations on a synthetic GTA5 / Cityscapes tree in ``work``, then a
    sliding-window evaluation of its checkpoint, both through adapt's CLI in this process. Raises RuntimeError when
    either fails (the run guard stops the fit on a non-finite loss)."""
    import torch

    from adapt.cli import main as adapt
    from adapt.nets.segmenter import build_segmenter

    sys.path.insert(0, str(REPO / "tests"))  # the tiny-tree writers live with the tests
    from trees import write_tiny_cityscapes, write_tiny_gta5

    gta_size, city_size = ((64, 112), (64, 128)) if dry_run else ((1052, 1914), (1024, 2048))
    write_tiny_gta5(work / "gta5", num=4, size=gta_size)
    for split in ("train", "val"):
        write_tiny_cityscapes(work / "cityscapes", split, cities=("aachen",), per_city=2, size=city_size)
    # random weights (no hub on a GPU machine either) saved as a local encoder file, which the feature distance's
    # frozen reference needs: the fit computes and stores everything the recipe does
    encoder = "mit_b0" if dry_run else "mit_b5"
    weights = work / f"{encoder}_random.pth"
    torch.save(build_segmenter("daformer", encoder, None, num_classes=19).net.encoder.state_dict(), weights)
    overrides = [f"--data.init_args.source_root={work / 'gta5'}", f"--data.init_args.target_root={work / 'cityscapes'}",
                 f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
                 f"--trainer.default_root_dir={work / 'mic'}", "--trainer.enable_progress_bar=false",
                 f"--model.init_args.encoder_name={encoder}", f"--model.init_args.encoder_weights={weights}"]
    if dry_run:  # tiny: the smallest MiT, sizes, crops, HRDA's detail crop and RCS's pixel counts scaled down
        overrides += ["--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.devices=1",
                      "--data.init_args.crop_size=[64, 64]", "--data.init_args.resize=[64, 112]",
                      "--data.init_args.target_resize=[64, 128]", "--data.init_args.rare_class_sampling.min_pixels=20",
                      "--data.init_args.batch_size=2", "--model.init_args.multi_resolution.detail_crop=[32, 32]",
                      "--data.init_args.num_workers=0"]
    else:
        overrides += ["--trainer.devices=1"]  # the recipe as shipped: GPU, fp32, batch 2, 1024 crops, 512 detail crops
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    _call(adapt, ["fit", "--config", str(REPO / "recipes/gta5_to_cityscapes/mic.yaml"), *overrides], "MIC fit")
    fit_seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() // 2**20 if device == "cuda" else None
    checkpoint = max((work / "mic").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    reached = torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]
    if reached != steps:
        raise RuntimeError(f"MIC fit stopped at step {reached} of {steps} ({checkpoint})")
    window = "[64, 64]" if dry_run else "[1024, 1024]"
    _call(adapt, ["evaluate", "--checkpoint", str(checkpoint), "--kind", "cityscapes", "--root",
                  str(work / "cityscapes"), "--split", "val", "--protocol", "slide", "--window", window,
                  "--output", str(work / "eval"), "--plots", "false", "--accelerator", device],
          "sliding-window evaluation")
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    cost = json.loads(next(checkpoint.parents[1].glob("run.json")).read_text()).get("cost") or {}
    return {"steps": steps, "fit_seconds": fit_seconds, "total_seconds": time.perf_counter() - started,
            "checkpoint": str(checkpoint.relative_to(work)), "miou": metrics["miou"], "peak_mib": peak, "cost": cost}


def energy_line(mic: dict, dry_run: bool) -> str:
    """The MIC fit's energy per 100 iterations, from its run record's ``cost`` (or why there is none)."""
    cost, steps = mic["cost"], mic["steps"]
    if "energy_kwh" not in cost:
        return f"MIC energy: not measured ({cost.get('error') or cost.get('tracker') or 'no cost in run.json'})"
    per_100 = cost["energy_kwh"] * 1000 * 100 / steps
    return (f"MIC energy: {per_100:.3g} Wh per 100 iterations ({cost['energy_kwh'] * 1000:.3g} Wh for {steps}, "
            f"{cost['device_hours']:.3g} {cost['device_hours_unit'].split(' (')[0]}, "
            f"{cost['emissions_kg'] * 1000 * 100 / steps:.3g} g CO2-eq per 100 at {cost['carbon_intensity']:.0f} "
            f"g/kWh; {cost['measured']}){' (dry run: CPU, not a measurement)' if dry_run else ''}")


def _call(adapt, argv: list[str], what: str) -> None:
    try:
        adapt(argv)
    except SystemExit as exit_:
        if exit_.code:
            raise RuntimeError(f"{what} failed (exit {exit_.code}): adapt {' '.join(argv)}") from None


def _child(argv: list[str]) -> dict:
    """Run ``gpu_check.py --child ...`` in a fresh process; its last ``RESULT`` line, parsed."""
    try:
        out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, cwd=REPO,
                             timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"gpu_check child {' '.join(argv)} ran past {CHILD_TIMEOUT} s") from None
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"gpu_check child {' '.join(argv)} failed:\n{(out.stderr or out.stdout)[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the code, not the GPU")
    parser.add_argument("--warmup", type=int, help="untimed steps per run (default 3; dry run 1)")
    parser.add_argument("--steps", type=int, help="timed steps per run (default 10; dry run 2)")
    parser.add_argument("--repeats", type=int, help="plain/adapt pairs per setting (default 2; dry run 1)")
    parser.add_argument("--mic_steps", type=int, help="MIC iterations (default 100; dry run 2)")
    parser.add_argument("--output", default=None, help="also write the table to this result file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # one setting, or the MIC check
    args = parser.parse_args()
    dry = args.dry_run
    warmup, steps = args.warmup or (1 if dry else 3), args.steps or (2 if dry else 10)
    repeats, mic_steps = args.repeats or (1 if dry else 2), args.mic_steps or (2 if dry else 100)
    device = "cpu" if dry else "cuda"
    if args.child:
        if args.child[0] == "mic":
            result = mic_check(dry, mic_steps, Path(args.child[1]), device)
        else:
            result = measure(json.loads(args.child[0]), device, warmup, steps, repeats)
        print("RESULT " + json.dumps(result))
        return
    import torch

    if not dry and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run it on a GPU machine, or --dry-run to check the code on CPU")
    started = time.perf_counter()
    where = "CPU (dry run: tiny sizes, not a measurement)" if dry else torch.cuda.get_device_name()
    lines = [f"gpu_check on {where}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}; {warmup} untimed + "
             f"{steps} timed steps per run, {repeats} plain/adapt pair(s) per setting, each setting in a fresh "
             "process",
             f"{'model':<30} {'batch':>5} {'size':>5} {'precision':<10} {'NHWC':<4} {'compile':<8} "
             f"{'plain img/s':>11} {'adapt img/s':>11} {'ratio':>6} {'plain MiB':>10} {'adapt MiB':>10} {'row s':>6}"]
    print("\n".join(lines), flush=True)
    for setting in settings(dry):
        row_started = time.perf_counter()  # compiled settings: one pair (each side compiles its own F)
        row = _child(["--child", json.dumps(setting), *sys.argv[1:], *(["--repeats", "1"] if setting["compile"]
                                                                      else [])])
        plain, ours = row["plain"], row["adapt"]
        lines.append(f"{setting['model']:<30} {setting['batch_size']:>5} {setting['size']:>5} "
                     f"{setting['precision']:<10} {'on' if setting['channels_last'] else 'off':<4} "
                     f"{setting['compile'] or 'off':<8} {plain['images_per_s']:>11.2f} {ours['images_per_s']:>11.2f} "
                     f"{ours['images_per_s'] / plain['images_per_s']:>6.3f} {_mib(plain['peak_mib']):>10} "
                     f"{_mib(ours['peak_mib']):>10} {time.perf_counter() - row_started:>6.0f}")
        print(lines[-1], flush=True)
    with tempfile.TemporaryDirectory() as work:
        mic = _child(["--child", "mic", work, *sys.argv[1:]])
    lines += [f"MIC recipe (gta5_to_cityscapes/mic.yaml), {mic['steps']} iterations on synthetic GTA5 / Cityscapes "
              f"trees at {'tiny' if dry else 'full'} resolution: fit {mic['fit_seconds']:.0f} s, peak "
              f"{_mib(mic['peak_mib'])} MiB, finite losses, {mic['checkpoint']} written, sliding-window evaluation "
              f"mIoU {mic['miou']:.2f} % (random labels and weights: it shows that it runs, not how well)",
              energy_line(mic, dry), f"total {time.perf_counter() - started:.0f} s"]
    print("\n".join(lines[-3:]))
    if args.output:
        from record import write_result  # benchmarks/ is on sys.path: this file runs as a script

        write_result(args.output, "\n".join(lines))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
