"""TranslationTask: which weights each step moves, the frozen F, pictures, checkpoints, and using T."""

import json

import pytest
import pytorch_lightning as pl
import torch
import yaml
from conftest import REPO, adapt_main, tiny_datamodule

from adapt.checkpoints import load_translator
from adapt.tasks import TranslationTask


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


class StepSpy(pl.Callback):
    """Snapshots generator and discriminator weights around each optimizer's step."""

    def __init__(self):
        self.records = []

    def on_train_start(self, trainer, task):
        for which, optimizer in zip(("g", "d"), trainer.optimizers):
            original = optimizer.step

            def step(*args, _original=original, _which=which, **kwargs):
                before = {"g": params(task.g_st) | params(task.g_ts), "d": params(task.d_s) | params(task.d_t)}
                result = _original(*args, **kwargs)
                after = {"g": params(task.g_st) | params(task.g_ts), "d": params(task.d_s) | params(task.d_t)}
                self.records.append((_which, before, after))
                return result

            optimizer.step = step


def tiny_translation(**kwargs):
    return TranslationTask(ngf=8, n_blocks=1, ndf=8, pool_size=2, **kwargs)


def test_g_step_moves_only_g_and_d_step_only_d_and_f_stays_frozen(tiny_pair, segmenter_ckpt, tmp_path):
    dm = tiny_datamodule(tiny_pair)
    task = tiny_translation(lambda_semantic=1.0, segmenter_checkpoint=str(segmenter_ckpt),
                            class_names=dm.class_names)
    spy = StepSpy()
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[spy],
                         default_root_dir=tmp_path)
    trainer.fit(task, dm)
    assert [r[0] for r in spy.records] == ["g", "d", "g", "d"]  # two optimizer steps per batch
    assert trainer.global_step == 4
    for which, before, after in spy.records:
        other = "d" if which == "g" else "g"
        assert same(before[other], after[other]), f"the {which} step changed {other}"
        assert not same(before[which], after[which]), f"the {which} step changed nothing"
    frozen = torch.load(segmenter_ckpt, weights_only=False)["state_dict"]
    for name, value in task.segmenter.state_dict().items():
        assert torch.equal(value, frozen[f"segmenter.{name}"]), name
    assert not any(k.startswith("segmenter.") for k in task.state_dict())  # F is not saved with T
    assert (tmp_path / "pictures" / "final.png").is_file()


def test_semantic_loss_needs_a_segmenter():
    with pytest.raises(ValueError, match="segmenter_checkpoint"):
        tiny_translation(lambda_semantic=1.0)


def test_lr_schedule_constant_then_linear(tiny_pair, tmp_path):
    dm = tiny_datamodule(tiny_pair)
    task = tiny_translation(decay_start=0.5, class_names=dm.class_names)
    lrs = []

    class Watch(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    pl.Trainer(max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0, callbacks=[Watch()],
               default_root_dir=tmp_path).fit(task, dm)
    # 4 iterations: constant for 2, then linear to 0 (factor after iteration i: 1 - max(0, i - 2) / 2)
    assert lrs == pytest.approx([2e-4, 2e-4, 1e-4, 0.0])


def write_experiment(tmp_path, pair):
    """A tiny three-stage chain: F, T through F, evaluations of F(x_t) and F(g_ts(x_t))."""
    f_recipe = yaml.safe_load((REPO / "recipes/demo/source_only.yaml").read_text())
    f_recipe["trainer"].update(max_steps=2, max_epochs=None, check_val_every_n_epoch=1, limit_val_batches=1)
    f_recipe["data"] = {"class_path": "adapt.data.DomainDataModule",
                        "init_args": {"source_root": str(pair / "source"), "target_root": str(pair / "target"),
                                      "source_split": "train", "target_split": "train", "val_split": "val",
                                      "batch_size": 2}}
    t_recipe = yaml.safe_load((REPO / "recipes/demo/translator.yaml").read_text())
    t_recipe["trainer"].update(max_steps=4)
    t_recipe["model"]["init_args"].update(ngf=8, n_blocks=1, ndf=8, picture_every_n_steps=2)
    t_recipe["data"] = f_recipe["data"]
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(f_recipe))
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(t_recipe))
    experiment = {"output": str(tmp_path / "out"), "stages": [
        {"name": "f", "fit": str(tmp_path / "f.yaml")},
        {"name": "t", "fit": str(tmp_path / "t.yaml"), "args": ["--model.init_args.segmenter_checkpoint=${f}"]},
        {"name": "plain", "evaluate": {"checkpoint": "${f}", "root": str(pair / "target"), "split": "val"}},
        {"name": "translated", "evaluate": {"checkpoint": "${f}", "translator": "${t}",
                                            "root": str(pair / "target"), "split": "val"}}]}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


@pytest.mark.slow
def test_run_chains_stages_and_skips_finished_ones(tmp_path, tiny_pair, capsys):
    experiment = write_experiment(tmp_path, tiny_pair)
    code, _, err = adapt_main(capsys, "run", str(experiment))  # its fit stages are processes of their own
    assert code == 0, err[-3000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"plain", "translated"}
    assert summary["translated"]["translator"].endswith("last.ckpt") and summary["plain"]["translator"] is None
    assert (out / "t" / "lightning_logs" / "version_0" / "pictures" / "final.png").is_file()
    f_ckpt = json.loads((out / "f" / "stage.json").read_text())["checkpoint"]
    stamp = (out / "f" / "stage.json").stat().st_mtime_ns, (tmp_path / "out" / "f").stat().st_mtime_ns
    code, stdout, err = adapt_main(capsys, "run", str(experiment))
    assert code == 0, err[-3000:]
    assert stdout.count(": reused: finished earlier with the same inputs") == 4
    assert stamp == ((out / "f" / "stage.json").stat().st_mtime_ns, (tmp_path / "out" / "f").stat().st_mtime_ns)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert not list((out / "f" / "lightning_logs").glob("version_1"))  # F was not trained again

    # the T checkpoint drives `adapt translate` and loads as either generator
    t_ckpt = json.loads((out / "t" / "stage.json").read_text())["checkpoint"]
    assert load_translator(t_ckpt, "source-to-target")(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    code, stdout, err = adapt_main(capsys, "translate", "--checkpoint", t_ckpt, "--direction", "source-to-target",
                                   "--input", str(tiny_pair / "source"), "--output",
                                   str(tmp_path / "translated"))
    assert code == 0 and "wrote 24 translated images" in stdout, err[-3000:]
    from adapt.data import FolderDataset

    translated = FolderDataset(tmp_path / "translated", split="val")
    original = FolderDataset(tiny_pair / "source", split="val")
    assert len(translated) == len(original)
    assert torch.equal(translated[0]["mask"], original[0]["mask"])  # labels copied along
    assert not torch.equal(translated[0]["image"], original[0]["image"])
    code, _, err = adapt_main(capsys, "evaluate", "--checkpoint", t_ckpt, "--root", str(tiny_pair / "target"))
    assert code == 2 and f"{t_ckpt} is a translator checkpoint; give an F (segmenter) checkpoint" in err

    # the F stage's checkpoint: the fit's last.ckpt, an F (segmenter) checkpoint, and what both evaluate stages scored
    from adapt.checkpoints import checkpoint_kind, load_checkpoint

    f_last = out / "f" / "checkpoints" / "last.ckpt"
    assert f_ckpt == str(f_last) and f_last.is_file()
    f_loaded = load_checkpoint(f_ckpt)
    assert checkpoint_kind(f_loaded) == "segmenter"
    assert summary["translated"]["translator"] == t_ckpt
    target_val = len(FolderDataset(tiny_pair / "target", split="val"))
    for name in ("plain", "translated"):
        metrics = summary[name]
        assert metrics["checkpoint"] == f_ckpt and metrics["split"] == "val" and metrics["num_images"] == target_val
        assert list(metrics["per_class_iou"]) == list(f_loaded["hyper_parameters"]["class_names"])
        for key in ("miou", "pixel_accuracy"):
            assert isinstance(metrics[key], float) and 0 <= metrics[key] <= 100, (name, key, metrics[key])
        defined = [v for v in metrics["per_class_iou"].values() if v is not None]
        assert defined and abs(metrics["miou"] - sum(defined) / len(defined)) < 1e-4  # macro mean of the classes


def test_logged_losses_equal_a_hand_computation(tiny_pair, tmp_path):
    """One iteration with pool_size 0: recompute L_G and L_D from the batch and the weights it started with."""
    import copy

    dm = tiny_datamodule(tiny_pair)
    task = TranslationTask(ngf=8, n_blocks=1, ndf=8, pool_size=0, class_names=dm.class_names)
    seen = {}

    class Capture(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            seen["batch"] = batch
            seen["nets"] = {n: copy.deepcopy(getattr(module, n)) for n in ("g_st", "g_ts", "d_s", "d_t")}

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen["logged"] = {k: float(v) for k, v in trainer.callback_metrics.items()}

    pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0, callbacks=[Capture()],
               default_root_dir=tmp_path).fit(task, dm)
    g_st, g_ts, d_s, d_t = (seen["nets"][n] for n in ("g_st", "g_ts", "d_s", "d_t"))
    x_s, x_t = seen["batch"]["source"]["image"], seen["batch"]["target"]["image"]
    with torch.no_grad():
        x_st, x_ts = g_st(x_s), g_ts(x_t)
        gan = ((d_t(x_st) - 1) ** 2).mean() + ((d_s(x_ts) - 1) ** 2).mean()
        # L1 on CycleGAN's [-1, 1] scale: |(2a - 1) - (2b - 1)| = 2 |a - b|
        cycle = 2 * (g_ts(x_st) - x_s).abs().mean() + 2 * (g_st(x_ts) - x_t).abs().mean()
        identity = 2 * (g_st(x_t) - x_t).abs().mean() + 2 * (g_ts(x_s) - x_s).abs().mean()
        loss_g = gan + 10 * cycle + 10 * 0.5 * identity
        loss_d = (0.5 * (((d_t(x_t) - 1) ** 2).mean() + (d_t(x_st) ** 2).mean())
                  + 0.5 * (((d_s(x_s) - 1) ** 2).mean() + (d_s(x_ts) ** 2).mean()))
    logged = seen["logged"]
    assert logged["train/loss_gan"] == pytest.approx(float(gan), rel=1e-5)
    assert logged["train/loss_cycle"] == pytest.approx(float(cycle), rel=1e-5)
    assert logged["train/loss_g"] == pytest.approx(float(loss_g), rel=1e-5)
    assert logged["train/loss_d"] == pytest.approx(float(loss_d), rel=1e-5)
