"""The real `adapt` command end to end on a tiny synthetic pair."""

import json

import pytest
import yaml

from conftest import REPO, run_adapt


def tiny_recipe(tmp_path, pair, **changes):
    recipe = yaml.safe_load((REPO / "recipes/demo/randomized.yaml").read_text())
    recipe["trainer"].update(max_steps=6, max_epochs=None, log_every_n_steps=1, check_val_every_n_epoch=1)
    recipe["data"] = {"class_path": "adapt.data.DomainDataModule",
                      "init_args": {"source_root": str(pair / "source"), "target_root": str(pair / "target"),
                                    "source_split": "train", "target_split": "train", "val_split": "val",
                                    "augment": "strong", "batch_size": 4, "val_batch_size": 4}}
    recipe.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_fit_then_evaluate_through_the_cli(tmp_path, tiny_pair):
    recipe = tiny_recipe(tmp_path, tiny_pair)
    run_dir = tmp_path / "run"
    fit = run_adapt("fit", "--config", str(recipe), f"--trainer.default_root_dir={run_dir}",
                    "--model.init_args.arch=fpn")
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpts = list(run_dir.rglob("last.ckpt"))
    assert len(ckpts) == 1
    # everything the run wrote is under default_root_dir: checkpoint, resolved config, logs
    assert list(run_dir.rglob("config.yaml")) and list(run_dir.rglob("metrics.csv"))
    config = yaml.safe_load(next(run_dir.rglob("config.yaml")).read_text())
    assert config["model"]["init_args"]["arch"] == "fpn"

    out = tmp_path / "eval"
    ev = run_adapt("evaluate", "--checkpoint", str(ckpts[0]), "--root", str(tiny_pair / "target"),
                   "--split", "val", "--out", str(out))
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"miou", "per_class_iou", "pixel_accuracy", "num_images", "protocol"}
    assert metrics["num_images"] == 6 and metrics["protocol"]["mode"] == "full"
    assert list(metrics["per_class_iou"]) == ["road", "sidewalk", "building", "sky", "vegetation", "terrain", "car",
                                              "person", "pole", "sign"]
    defined = [v for v in metrics["per_class_iou"].values() if v is not None]
    assert 0 <= metrics["miou"] <= 100 and abs(metrics["miou"] - sum(defined) / len(defined)) < 1e-4
    assert 0 <= metrics["pixel_accuracy"] <= 100
    assert "mIoU" in ev.stdout and "road" in ev.stdout  # the per-class table


def test_misspelt_recipe_key_fails_naming_it(tmp_path, tiny_pair):
    recipe = tiny_recipe(tmp_path, tiny_pair)
    text = recipe.read_text().replace("weight_decay:", "wieght_decay:")
    recipe.write_text(text)
    result = run_adapt("fit", "--config", str(recipe), f"--trainer.default_root_dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "model.init_args.wieght_decay" in result.stderr and "weight_decay" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_misspelt_override_and_bad_type(tmp_path, tiny_pair):
    recipe = tiny_recipe(tmp_path, tiny_pair)
    result = run_adapt("fit", "--config", str(recipe), "--trainer.max_step=3")
    assert result.returncode != 0 and "trainer.max_step" in result.stderr and "max_steps" in result.stderr
    result = run_adapt("fit", "--config", str(recipe), "--model.init_args.lr=fast")
    assert result.returncode != 0 and "lr" in result.stderr and "float" in result.stderr
    assert "Traceback" not in result.stderr


def test_print_config_shows_the_resolved_recipe(tmp_path, tiny_pair):
    result = run_adapt("fit", "--config", str(tiny_recipe(tmp_path, tiny_pair)), "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    config = yaml.safe_load(result.stdout)
    assert config["model"]["init_args"]["encoder_name"] == "resnet18"
    assert config["data"]["init_args"]["augment"] == "strong"


def test_evaluate_bad_inputs(tmp_path, tiny_pair):
    missing = run_adapt("evaluate", "--checkpoint", str(tmp_path / "nope.ckpt"), "--root", str(tiny_pair / "target"))
    assert missing.returncode != 0 and "nope.ckpt" in missing.stderr and "Traceback" not in missing.stderr
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    bad = run_adapt("evaluate", "--checkpoint", str(junk), "--root", str(tiny_pair / "target"))
    assert bad.returncode != 0 and "junk.ckpt" in bad.stderr


def test_data_synth_writes_two_folder_datasets(tmp_path):
    result = run_adapt("data", "synth", "--out", str(tmp_path / "pair"), "--num", "8", "--size", "48", "64",
                       "--seed", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    from adapt.data import FolderDataset

    for domain in ("source", "target"):
        dataset = FolderDataset(tmp_path / "pair" / domain)
        assert len(dataset) == 8 and dataset[0]["image"].shape == (3, 48, 64)


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(REPO)) for p in (REPO / "recipes").rglob("*.yaml")))
def test_every_shipped_recipe_parses(recipe, capsys, monkeypatch):
    """Every recipe resolves (keys, types, class paths) as LightningCLI reads it; experiments are checked too."""
    from adapt.workflows.experiment import check_experiment
    from adapt.recipe import load_yaml
    from conftest import adapt_main

    monkeypatch.chdir(REPO)  # recipes name their files relative to the repository root
    doc = load_yaml(REPO / recipe)
    if "stages" in doc:
        assert check_experiment(doc, REPO / recipe)
        return
    code, out, err = adapt_main(capsys, "fit", "--config", recipe, "--print_config")
    assert code == 0, err
    assert "class_path: adapt." in out
