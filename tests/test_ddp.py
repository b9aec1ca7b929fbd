"""DDP on the CPU: 2 processes give the answer of 1 process with the same global batch and seed.

Lightning's DDP re-launches its command for rank 1, so each multi-process run is the real `adapt fit` in a
subprocess. The runs use ``precision: 64-true``: in float32 the two runs differ by rounding (a gradient summed in one
kernel vs two halves summed over processes), and Adam's first steps turn the sign of near-zero gradients into
+-lr, so float32 runs drift apart by ~1e-3 without any logic error; in float64 a wrong shard, normalization,
BatchNorm or metric reduction still shows at full size, rounding no longer does. Dropout is off: each process draws
its own masks (see ``decorrelate_processes``), which cannot equal one process's masks for the whole batch.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_adapt
from test_logging import events

pytestmark = pytest.mark.slow  # every test here starts several processes

FP64 = ["--trainer.precision=64-true", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
TWO = ["--trainer.devices=2", "--trainer.num_nodes=1"]


def _fit(root: Path, *args: str) -> Path:
    """`adapt fit` into ``root``; its last.ckpt."""
    result = run_adapt("fit", *args, f"--trainer.default_root_dir={root}")
    assert result.returncode == 0, result.stderr[-3000:]
    return next(root.rglob("last.ckpt"))


def _logged(checkpoint: Path, key: str) -> list[float]:
    rows = csv.DictReader(open(checkpoint.parents[1] / "metrics.csv"))
    return [float(r[key]) for r in rows if r.get(key)]


def _max_weight_difference(a: Path, b: Path) -> float:
    sa, sb = (torch.load(p, map_location="cpu", weights_only=True)["state_dict"] for p in (a, b))
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa if sa[k].is_floating_point())


def test_segmentation_two_processes_equal_one(tmp_path):
    """The demo's randomized recipe (strong DR, FPN with BatchNorm): 2 processes x batch 4 with sync_batchnorm vs
    1 process x batch 8 with a DataLoader worker; 11 validation images (6 + 5: uneven shards), 64x64."""
    common = ["--config", "recipes/demo/randomized.yaml", f"--data.init_args.root={tmp_path}/data",
              "--data.init_args.num_images=44", "--data.init_args.size=[64, 64]", "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1",
              '--model.init_args.segmenter_kwargs={"decoder_dropout": 0.0}', *FP64]
    one = _fit(tmp_path / "one", *common, "--data.init_args.batch_size=8", "--data.init_args.num_workers=1")
    two = _fit(tmp_path / "two", *common, *TWO, "--trainer.strategy=ddp", "--trainer.sync_batchnorm=true",
               "--data.init_args.batch_size=4")
    miou_one, miou_two = _logged(one, "val/miou"), _logged(two, "val/miou")
    assert len(miou_one) == len(miou_two) == 2
    assert np.allclose(miou_one, miou_two, rtol=0, atol=1e-4), (miou_one, miou_two)
    assert _logged(one, "val/ece") == pytest.approx(_logged(two, "val/ece"), abs=1e-6)
    assert _max_weight_difference(one, two) < 1e-6
    for path in (one, two):  # 2 epochs of floor(33 / 8) = 4 global batches
        assert torch.load(path, map_location="cpu", weights_only=True)["global_step"] == 8


def test_translation_two_processes_equal_one_and_resume_in_one(tmp_path, segmenter_ckpt):
    """One epoch of CyCADA (frozen F on every process, image pools gathered across processes) under DDP equals the
    single-process run; its checkpoint loads, and resumes in one process (a different device count)."""
    common = ["--config", "recipes/demo/translator.yaml", f"--data.init_args.root={tmp_path}/data",
              "--data.init_args.num_images=24", "--data.init_args.size=[64, 64]", "--trainer.max_epochs=1",
              "--trainer.max_steps=-1", "--trainer.log_every_n_steps=1", "--model.init_args.pool_size=3",
              "--model.init_args.ngf=8", "--model.init_args.n_blocks=2", "--model.init_args.ndf=16",
              f"--model.init_args.segmenter_checkpoint={segmenter_ckpt}", *FP64]
    two = _fit(tmp_path / "two", *common, *TWO, "--trainer.strategy=ddp_find_unused_parameters_true",
               "--data.init_args.batch_size=2")
    one = _fit(tmp_path / "one", *common, "--data.init_args.batch_size=4")
    for key in ("train/loss_g", "train/loss_d", "train/loss_semantic"):
        values = _logged(two, key)
        assert values and all(math.isfinite(v) for v in values), key
        assert values == pytest.approx(_logged(one, key), rel=1e-9), key
    assert _max_weight_difference(one, two) < 1e-6
    state = torch.load(two, map_location="cpu", weights_only=True)
    pools = torch.load(one, map_location="cpu", weights_only=True)["image_pools"]
    for side in ("s", "t"):
        assert len(state["image_pools"][side]["images"]) == 3
        for a, b in zip(state["image_pools"][side]["images"], pools[side]["images"]):
            assert torch.allclose(a, b, atol=1e-9)
    assert [p.name for p in (two.parents[1] / "pictures").iterdir()] == ["final.png"]  # rank 0 alone writes it
    assert "pictures/final" in events(two.parents[1]).Tags()["images"]  # and logs it to TensorBoard

    from adapt.checkpoints import load_translator

    generator = load_translator(two, "target-to-source")
    assert generator(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    resumed = _fit(tmp_path / "resumed", *[a for a in common if not a.startswith("--trainer.max_epochs")],
                   "--trainer.max_epochs=2", "--data.init_args.batch_size=4", f"--ckpt_path={two}")
    assert torch.load(resumed, map_location="cpu", weights_only=True)["global_step"] == 2 * state["global_step"]


def test_cost_counts_each_node_once_and_every_process_in_device_hours(tmp_path):
    """2 CPU processes on one node: local rank 0 alone tracks (codecarbon measures the whole machine), so run.json's
    energy and emissions are one node's (``nodes`` 1, not 2), while device hours count both processes."""
    import json

    checkpoint = _fit(tmp_path / "run", "--config", "recipes/demo/source_only.yaml",
                      f"--data.init_args.root={tmp_path}/data", "--data.init_args.num_images=24",
                      "--data.init_args.size=[64, 64]", "--data.init_args.batch_size=2", "--trainer.max_steps=2",
                      "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false", *TWO,
                      "--trainer.strategy=ddp", "--cost.carbon_intensity=100")
    record = json.loads((checkpoint.parents[1] / "run.json").read_text())
    cost = record["cost"]
    assert record["status"] == "finished" and record["processes"] == 2 and "error" not in cost
    assert cost["nodes"] == 1 and cost["devices"] == 2 and cost["energy_kwh"] >= 0
    assert cost["device_hours"] == pytest.approx(cost["wall_seconds"] / 3600 * 2, abs=1e-6)
    assert cost["emissions_kg"] == pytest.approx(cost["energy_kwh"] * 100 / 1000, rel=1e-6, abs=1e-15)


def test_translation_refuses_plain_ddp(tmp_path):
    result = run_adapt("fit", "--config", "recipes/demo/translator.yaml", f"--data.init_args.root={tmp_path}/data",
                       "--data.init_args.num_images=24", "--data.init_args.size=[64, 64]", "--trainer.max_steps=2",
                       *TWO, "--trainer.strategy=ddp",
                       "--data.init_args.batch_size=2", f"--trainer.default_root_dir={tmp_path}/run",
                       "--model.init_args.lambda_semantic=0", *FP64)
    assert result.returncode == 2
    assert "adapt: error: trainer.strategy:" in result.stderr and "ddp_find_unused_parameters_true" in result.stderr
    assert "Traceback" not in result.stderr


def _sync_bn_worker(rank: int, world_size: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from adapt.distributed import CPUSyncBatchNorm, convert_sync_batchnorm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    net = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)), cpu=True)
    assert isinstance(net[1], CPUSyncBatchNorm)
    x = (torch.randn(6, 3, 9, 7, generator=torch.Generator().manual_seed(1)) * 3 + 2)[rank::world_size]
    x.requires_grad_(True)
    y = net(x)
    (y.pow(3).sum() / 6).backward()  # a loss summed over the global batch
    torch.save({"y": y.detach(), "x_grad": x.grad, "w_grad": net[0].weight.grad, "bn_grad": net[1].weight.grad,
                "running_var": net[1].running_var, "running_mean": net[1].running_mean}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_cpu_sync_batchnorm_equals_batchnorm_on_the_whole_batch(tmp_path):
    """Forward, input and weight gradients (summed over processes, as DDP does) and running statistics."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sync_bn_worker, args=(2, port, str(tmp_path)), nprocs=2)
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    x = (torch.randn(6, 3, 9, 7, generator=torch.Generator().manual_seed(1)) * 3 + 2).requires_grad_(True)
    y = net(x)
    (y.pow(3).sum() / 6).backward()
    for r in range(2):
        assert torch.allclose(parts[r]["y"], y[r::2].detach(), atol=1e-5)
        assert torch.allclose(parts[r]["x_grad"], x.grad[r::2], rtol=1e-4, atol=1e-5)
        assert torch.allclose(parts[r]["running_var"], net[1].running_var, atol=1e-5)
        assert torch.allclose(parts[r]["running_mean"], net[1].running_mean, atol=1e-6)
    for key, param in (("w_grad", net[0].weight), ("bn_grad", net[1].weight)):
        assert torch.allclose(parts[0][key] + parts[1][key], param.grad, rtol=1e-4, atol=1e-4), key


def test_two_nodes_with_torchrun(tmp_path):
    """The README's multi-machine command, with 2 "machines" on this one: two torchrun launchers (node rank 0 and
    1, one process each) meet at a static rendezvous; Lightning reads the torchrun environment. 18 training images
    at batch 2 per process: 4 steps per epoch (global batch 4), not the 9 of one process."""
    import socket
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")

    def launch(attempt: int) -> tuple[list[int], list[str]]:
        with socket.socket() as s:  # a free port now; another test's process may still take it before torchrun
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launchers = [subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
             "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "adapt.cli", "fit",
             "--config", "recipes/demo/source_only.yaml", f"--data.init_args.root={tmp_path}/data{node}",
             "--data.init_args.num_images=24", "--data.init_args.batch_size=2", "--trainer.max_epochs=1",
             "--trainer.num_nodes=2", "--trainer.devices=1", "--trainer.strategy=ddp",
             "--trainer.sync_batchnorm=true", f"--trainer.default_root_dir={tmp_path}/run{attempt}_{node}",
             "--trainer.enable_progress_bar=false"],
            cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True) for node in range(2)]
        outputs = [p.communicate(timeout=600)[0] for p in launchers]
        return [p.returncode for p in launchers], outputs

    # one more try on a fresh port when the first fails (the rendezvous port can be lost to a concurrent test
    # between choosing and binding it); a second failure fails the test with both attempts' output
    attempt, (codes, outputs) = 0, launch(0)
    if codes != [0, 0]:
        first = outputs[0][-1500:] + outputs[1][-1500:]
        attempt, (codes, outputs) = 1, launch(1)
        assert codes == [0, 0], first + "\n--- second attempt ---\n" + outputs[0][-1500:] + outputs[1][-1500:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outputs[1]
    checkpoint = next((tmp_path / f"run{attempt}_0").rglob("last.ckpt"))  # written by global rank 0 only
    assert not list((tmp_path / f"run{attempt}_1").rglob("last.ckpt"))
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"] == 4


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_self_training_keeps_one_teacher_on_every_process(tmp_path, tiny_pair, mode):
    """Each process's BatchNorm statistics come from its own share of the batch (no sync_batchnorm here), yet the
    EMA teachers of both processes end identical, as do the students' weights: the official teacher (train mode)
    records no statistics; adapt's eval-mode teacher averages them and takes them from process 0."""
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run([sys.executable, "tests/ddp_self_training.py", str(tiny_pair), str(tmp_path), mode],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank_{r}.pt", weights_only=True) for r in range(2)]
    for key, value in ranks[0]["teacher"].items():
        assert torch.equal(value, ranks[1]["teacher"][key]), key
    student_bn = [k for k in ranks[0]["student"] if k.endswith("running_mean")]
    for key, value in ranks[0]["student"].items():
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(value, ranks[1]["student"][key]), key  # DDP: one set of weights
    assert any(not torch.equal(ranks[0]["student"][k], ranks[1]["student"][k]) for k in student_bn)  # they differ
    assert not torch.equal(ranks[0]["teacher"][student_bn[0]], ranks[0]["student"][student_bn[0]])  # an EMA
    started = torch.zeros_like(ranks[0]["teacher"][student_bn[0]])  # a fresh BatchNorm's running mean
    # the official teacher never records statistics; the eval-mode teacher's are an EMA of the student's
    assert torch.equal(ranks[0]["teacher"][student_bn[0]], started) == (mode == "train")


def test_adversarial_two_processes_equal_one_and_ranks_agree(tmp_path):
    """AdvEnt (F with BatchNorm, synced; the discriminator with its own optimizer and backward pass): 2 processes x
    batch 4 end with the F and D weights and log the losses of 1 process x batch 8, and both processes hold the same
    weights; 33 training images a domain (4 global batches), 64x64. The feature level runs the same steps, DDP
    wrapper and logging with another D input (tests/test_adversarial.py checks both levels in one process); it is
    left out here to keep the suite under 10 minutes on 2 cores."""
    common = ["--config", "recipes/demo/advent.yaml", f"--data.init_args.root={tmp_path}/data",
              "--data.init_args.num_images=44", "--data.init_args.size=[64, 64]", "--trainer.max_epochs=1",
              "--trainer.check_val_every_n_epoch=1", "--trainer.log_every_n_steps=1",
              "--model.init_args.lambda_adv=0.1", '--model.init_args.segmenter_kwargs={"decoder_dropout": 0.0}', *FP64]
    one = _fit(tmp_path / "one", *common, "--data.init_args.batch_size=8")
    result = run_adapt("fit", *common, *TWO, "--trainer.strategy=ddp_find_unused_parameters_true",
                       "--trainer.sync_batchnorm=true", "--data.init_args.batch_size=4",
                       "--trainer.callbacks+=test_adversarial.SaveEachRank", f"--trainer.callbacks.out={tmp_path}",
                       f"--trainer.default_root_dir={tmp_path / 'two'}", helpers=True)
    assert result.returncode == 0, result.stderr[-3000:]
    two = next((tmp_path / "two").rglob("last.ckpt"))
    # (pixel_cross_entropy takes its softmax in float32 even here: the source loss agrees to float32's rounding)
    for key, rel in (("train/loss_source", 1e-6), ("train/loss", 1e-6), ("train/loss_adv", 1e-9),
                     ("train/loss_d", 1e-9), ("train/d_accuracy", 1e-9)):
        values = _logged(two, key)
        assert len(values) == 4 and all(math.isfinite(v) for v in values), key
        assert values == pytest.approx(_logged(one, key), rel=rel), key
    assert _max_weight_difference(one, two) < 1e-6
    state = torch.load(two, map_location="cpu", weights_only=True)
    assert state["global_step"] == 8 and any(k.startswith("discriminator.") for k in state["state_dict"])
    ranks = [torch.load(tmp_path / f"rank_{r}.pt", map_location="cpu", weights_only=True) for r in range(2)]
    for key, value in ranks[0].items():  # F and D, BatchNorm statistics included (synced)
        assert torch.equal(value, ranks[1][key]), key
        assert torch.equal(value, state["state_dict"][key]), key
