"""Never lose a run: SIGTERM and resume, non-finite losses, atomic files, what checkpoints and run.json carry."""

import json
import os
import signal
import sys
import threading
import time

import pytest
import torch
from conftest import adapt_main, run_adapt
from test_cli import tiny_recipe

RESUMABLE = ["--trainer.max_steps=-1", "--trainer.max_epochs=3", "--trainer.check_val_every_n_epoch=1",
             "--data.init_args.batch_size=3", "--trainer.deterministic=true", "--seed_everything=1",
             "--trainer.enable_progress_bar=false"]  # 18 training images: 6 steps per epoch, 18 in all


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, tiny_pair):
    recipe = str(tiny_recipe(tmp_path, tiny_pair))
    whole = run_adapt("fit", "--config", recipe, f"--trainer.default_root_dir={tmp_path / 'whole'}", *RESUMABLE)
    assert whole.returncode == 0, whole.stderr[-3000:]

    run_dir, marker = tmp_path / "cut", tmp_path / "step.txt"
    fit = run_adapt("fit", "--config", recipe, f"--trainer.default_root_dir={run_dir}", *RESUMABLE,
                    "--trainer.callbacks+=helpers.Pace", f"--trainer.callbacks.marker={marker}",
                    helpers=True, background=True)
    deadline = time.time() + 300
    while not (marker.is_file() and marker.read_text() and int(marker.read_text()) >= 8):  # epoch 1, batch 2
        assert fit.poll() is None and time.time() < deadline, fit.communicate()[1][-3000:]
        time.sleep(0.05)
    fit.send_signal(signal.SIGTERM)
    _, stderr = fit.communicate(timeout=300)
    assert fit.returncode == 143, stderr[-3000:]
    assert "resumable checkpoint" in stderr and "--resume" in stderr and "Traceback" not in stderr
    cut = next(run_dir.rglob("last.ckpt"))
    state = torch.load(cut, map_location="cpu", weights_only=True)
    assert 8 <= state["global_step"] < 18 and state["global_step"] % 6 != 0  # mid-epoch, not at its end
    assert state["adapt"]["interrupted"] is True
    record = json.loads(next(run_dir.rglob("run.json")).read_text())
    assert record["status"] == "interrupted" and record["checkpoint"] == str(cut)

    resumed = run_adapt("fit", "--config", recipe, f"--trainer.default_root_dir={run_dir}", *RESUMABLE, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {cut}" in resumed.stdout
    final = sorted(run_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)[-1]
    assert torch.load(final, map_location="cpu", weights_only=True)["global_step"] == 18
    reference, result = weights(next((tmp_path / "whole").rglob("last.ckpt"))), weights(final)
    assert reference.keys() == result.keys()
    for name in reference:  # bitwise: same seed, CPU, deterministic mode (a nondeterministic run could not match)
        assert torch.equal(reference[name], result[name]), name
    assert not list(tmp_path.rglob("last-v*.ckpt"))  # one last.ckpt per run folder, rewritten in place
    # the run directory says how the run was made
    record = json.loads(next((tmp_path / "whole").rglob("run.json")).read_text())
    assert record["seed"] == 1 and record["status"] == "finished" and record["versions"]["torch"]
    assert "git_commit" in record


@pytest.mark.slow
def test_first_ctrl_c_finishes_the_step_and_writes_a_resumable_checkpoint(tmp_path, tiny_pair):
    run_dir, marker = tmp_path / "cut", tmp_path / "step.txt"
    fit = run_adapt("fit", "--config", str(tiny_recipe(tmp_path, tiny_pair)), f"--trainer.default_root_dir={run_dir}",
                    *RESUMABLE, "--trainer.callbacks+=helpers.Pace", f"--trainer.callbacks.marker={marker}",
                    helpers=True, background=True)
    deadline = time.time() + 300
    while not (marker.is_file() and marker.read_text() and int(marker.read_text()) >= 2):  # epoch 0, batch 1
        assert fit.poll() is None and time.time() < deadline, fit.communicate()[1][-3000:]
        time.sleep(0.05)
    fit.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends
    _, stderr = fit.communicate(timeout=300)
    assert fit.returncode == 143, stderr[-3000:]
    assert "Ctrl-C: finishing this step" in stderr and "--resume" in stderr and "Traceback" not in stderr
    state = torch.load(next(run_dir.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert 2 <= state["global_step"] < 6 and state["adapt"]["interrupted"] is True  # mid-epoch, a step boundary
    assert json.loads(next(run_dir.rglob("run.json")).read_text())["status"] == "interrupted"


def wait_for(condition, seconds: float = 5.0) -> None:
    """Let the main thread run Python signal handlers (between bytecodes) until ``condition()`` holds."""
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.01)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread only")
def test_signal_helpers_ctrl_c_as_sigterm_sigterm_raises_and_forwarding(tmp_path):
    from adapt.signals import CtrlCAsSigterm, Interrupted, sigterm_raises
    from adapt.workflows.experiment import run_logged

    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    received = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))  # stands for Lightning's handler
    ctrl_c = CtrlCAsSigterm()
    try:
        ctrl_c.install()
        os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: a SIGTERM to this process
        wait_for(lambda: received)
        assert received == [signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):  # second: abort at once
            os.kill(os.getpid(), signal.SIGINT)
            wait_for(lambda: False)
    finally:
        ctrl_c.restore()
        signal.signal(signal.SIGTERM, sigterm)
    assert signal.getsignal(signal.SIGINT) is sigint

    with pytest.raises(Interrupted) as stopped:  # outside Lightning: SIGTERM raises inside the block only
        with sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for(lambda: False)
    assert stopped.value.exit_code == 143 and signal.getsignal(signal.SIGTERM) is sigterm
    assert Interrupted.after(KeyboardInterrupt(), "kept nothing").exit_code == 130

    # adapt run: SIGTERM goes on to the stage's process; Ctrl-C is left to it (this process keeps reading)
    child = ("import signal, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
             "signal.signal(signal.SIGTERM, lambda *a: (print('stage: got SIGTERM', flush=True), sys.exit(7))); "
             "print('ready', flush=True); time.sleep(60)")
    log = tmp_path / "stage.log"

    def stop_when_ready() -> None:
        wait_for(lambda: log.is_file() and "ready" in log.read_text().splitlines(), 60)  # the stage's own line
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_when_ready)
    stopper.start()
    code = run_logged([sys.executable, "-c", child], log)
    stopper.join()
    assert code == 7 and "stage: got SIGTERM" in log.read_text()
    assert signal.getsignal(signal.SIGINT) is sigint and signal.getsignal(signal.SIGTERM) is sigterm


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_pair):
    recipe = str(tiny_recipe(tmp_path, tiny_pair))
    run_dir = tmp_path / "run"
    result = run_adapt("fit", "--config", recipe, f"--trainer.default_root_dir={run_dir}", *RESUMABLE,
                       "--trainer.callbacks+=helpers.PoisonBatch", "--trainer.callbacks.step=8", helpers=True)
    assert result.returncode == 1, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("adapt: error: the loss is nan at step 8 (epoch 1, batch 2)"), message
    assert "last good checkpoint" in message and "Traceback" not in result.stderr
    last = next(run_dir.rglob("last.ckpt"))
    assert str(last) in message
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["global_step"] == 6 and not state["adapt"]["interrupted"]  # epoch 0's, as it was written
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    record = json.loads(next(run_dir.rglob("run.json")).read_text())
    assert record["status"] == "failed" and "step 8" in record["error"]


def test_checkpoints_carry_the_recipe_classes_versions_and_load_weights_only(fit_run, tmp_path, tiny_pair, capsys):
    ckpt = torch.load(next(fit_run.rglob("last.ckpt")), map_location="cpu", weights_only=True)
    record = ckpt["adapt"]
    assert "max_epochs: 3" in record["recipe"] and record["class_names"][0] == "road"
    assert record["versions"]["pytorch-lightning"] and record["seed"] == 0 and record["command"][:2] == ["adapt", "fit"]
    assert record["interrupted"] is False
    run = json.loads(next(fit_run.rglob("run.json")).read_text())
    assert run["status"] == "finished" and run["step"] == 6 and run["seed"] == 0
    assert not list(fit_run.rglob("*.tmp"))
    # stopped by max_steps in the middle of an epoch after whole ones: last.ckpt holds the final step
    run_dir = tmp_path / "mid"
    code, _, err = adapt_main(capsys, "fit", "--config", str(tiny_recipe(tmp_path, tiny_pair)),
                              f"--trainer.default_root_dir={run_dir}", "--trainer.max_steps=8",
                              "--data.init_args.batch_size=3")  # 6 steps per epoch
    assert code == 0, err[-3000:]
    assert [p.name for p in run_dir.rglob("*.ckpt")] == ["last.ckpt"]
    assert torch.load(next(run_dir.rglob("last.ckpt")), weights_only=True)["global_step"] == 8


def test_frozen_translators_stay_out_of_the_checkpoint_and_follow_the_task():
    from adapt.tasks.segmentation import SegmentationTask

    task = SegmentationTask(arch="fpn", class_names=["a", "b", "c"])
    before = (set(task.state_dict()), sum(p.numel() for p in task.parameters()))
    generator = torch.nn.Conv2d(3, 3, 1)
    task.set_eval_translator(generator)
    assert task.eval_translator is generator and task.train_translator is None
    assert (set(task.state_dict()), sum(p.numel() for p in task.parameters())) == before  # not a submodule
    task.double().on_validation_start()  # frozen nets follow the task's device and precision
    assert generator.weight.dtype == torch.float64


def test_atomic_save_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    from adapt.files import atomic_save

    path = tmp_path / "f.ckpt"
    atomic_save({"a": torch.ones(2)}, path)

    def broken(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["f.ckpt"]


@pytest.mark.slow
def test_bad_images_skip_through_the_cli_counts_them(tmp_path, tiny_pair, capsys):
    import shutil

    pair = tmp_path / "pair"
    shutil.copytree(tiny_pair, pair)
    names = (pair / "source" / "splits" / "train.txt").read_text().split()
    next((pair / "source" / "images").glob(f"{names[0]}.*")).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    recipe = str(tiny_recipe(tmp_path, pair))
    every = ["--trainer.max_steps=-1", "--trainer.max_epochs=1", "--data.init_args.batch_size=3"]  # all 18 read
    code, _, err = adapt_main(capsys, "fit", "--config", recipe, f"--trainer.default_root_dir={tmp_path / 'stop'}",
                              *every)
    assert code == 2 and names[0] in err.splitlines()[-1], err[-3000:]
    assert "Traceback" not in err and not list((tmp_path / "stop").rglob("last.ckpt"))
    run_dir = tmp_path / "skip"
    skipped = run_adapt("fit", "--config", recipe, f"--trainer.default_root_dir={run_dir}", *every,
                        "--data.init_args.bad_images=skip")
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert json.loads(next(run_dir.rglob("run.json")).read_text())["skipped_images"] == 1
    assert "skipped 1 unreadable images" in skipped.stdout + skipped.stderr
    assert names[0] in skipped.stderr
