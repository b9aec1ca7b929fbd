"""The real `adapt` command end to end on a tiny synthetic pair."""

import json

import pytest
import yaml
from conftest import REPO, adapt_main


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


def test_fit_then_evaluate_through_the_cli(fit_run, tiny_pair, tmp_path, capsys):
    ckpts = list(fit_run.rglob("last.ckpt"))
    assert len(ckpts) == 1
    # everything the run wrote is under default_root_dir: checkpoint, resolved config, logs
    assert list(fit_run.rglob("config.yaml")) and list(fit_run.rglob("metrics.csv"))
    config = yaml.safe_load(next(fit_run.rglob("config.yaml")).read_text())
    assert config["model"]["init_args"]["arch"] == "fpn" and config["resume"] is False
    # the saved config.yaml is a recipe: it passes the key check and resolves again
    code, out, err = adapt_main(capsys, "fit", "--config", str(next(fit_run.rglob("config.yaml"))), "--print_config")
    assert code == 0 and yaml.safe_load(out)["model"]["init_args"]["arch"] == "fpn", err[-2000:]

    out = tmp_path / "eval"
    code, stdout, stderr = adapt_main(capsys, "evaluate", "--checkpoint", str(ckpts[0]), "--root",
                                      str(tiny_pair / "target"), "--split", "val", "--output", str(out))
    assert code == 0, stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"miou", "per_class_iou", "pixel_accuracy", "num_images", "protocol"}
    assert metrics["num_images"] == 6 and metrics["protocol"]["mode"] == "full"
    assert list(metrics["per_class_iou"]) == ["road", "sidewalk", "building", "sky", "vegetation", "terrain", "car",
                                              "person", "pole", "sign"]
    defined = [v for v in metrics["per_class_iou"].values() if v is not None]
    assert 0 <= metrics["miou"] <= 100 and abs(metrics["miou"] - sum(defined) / len(defined)) < 1e-4
    assert 0 <= metrics["pixel_accuracy"] <= 100
    road = f"road {metrics['per_class_iou']['road']:8.2f}" if metrics["per_class_iou"]["road"] is not None else "road"
    assert "mIoU" in stdout and " ".join(road.split()) in " ".join(stdout.split())  # the per-class table


def test_misspelt_recipe_key_fails_naming_it(tmp_path, tiny_pair, capsys):
    recipe = tiny_recipe(tmp_path, tiny_pair)
    text = recipe.read_text().replace("weight_decay:", "wieght_decay:")
    recipe.write_text(text)
    code, _, err = adapt_main(capsys, "fit", "--config", str(recipe), f"--trainer.default_root_dir={tmp_path / 'run'}")
    assert code == 2
    assert "model.init_args.wieght_decay" in err and "weight_decay" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_misspelt_override_and_bad_type(tmp_path, tiny_pair, capsys):
    recipe = tiny_recipe(tmp_path, tiny_pair)
    code, _, err = adapt_main(capsys, "fit", "--config", str(recipe), "--trainer.max_step=3")
    assert code == 2 and "trainer.max_step" in err and "max_steps" in err
    code, _, err = adapt_main(capsys, "fit", "--config", str(recipe), "--model.init_args.lr=fast")
    assert code == 2 and "lr" in err and "float" in err
    assert "Traceback" not in err


def test_print_config_shows_the_resolved_recipe(tmp_path, tiny_pair, capsys):
    code, out, err = adapt_main(capsys, "fit", "--config", str(tiny_recipe(tmp_path, tiny_pair)), "--print_config")
    assert code == 0, err[-2000:]
    config = yaml.safe_load(out)
    assert config["model"]["init_args"]["encoder_name"] == "resnet18"
    assert config["data"]["init_args"]["augment"] == "strong"


def test_evaluate_bad_inputs(tmp_path, tiny_pair, capsys):
    code, _, err = adapt_main(capsys, "evaluate", "--checkpoint", str(tmp_path / "nope.ckpt"), "--root",
                              str(tiny_pair / "target"))
    assert code == 2 and "nope.ckpt" in err and "Traceback" not in err
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = adapt_main(capsys, "evaluate", "--checkpoint", str(junk), "--root", str(tiny_pair / "target"))
    assert code == 2 and "junk.ckpt" in err and "not a readable checkpoint" in err


def test_help_lists_every_verb_and_each_verb_its_arguments(capsys):
    from adapt.commands import VERBS

    code, out, _ = adapt_main(capsys, "--help")
    assert code == 0 and out.startswith("usage:")
    for verb in [*VERBS, "fit", "run", "demo"]:
        assert f"adapt {verb}" in out, verb
    with pytest.raises(SystemExit) as exit_:  # jsonargparse's help, from the function's signature and docstring
        from adapt.cli import main

        main(["tta", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert "--method {adabn,tent}" in help_text and "TENT: Adam steps on BatchNorm's affine parameters" in help_text


def test_data_synth_writes_two_folder_datasets(tmp_path, capsys):
    code, _, err = adapt_main(capsys, "data", "synth", "--output", str(tmp_path / "pair"), "--num_images", "8",
                              "--size", "[48, 64]", "--seed", "5")
    assert code == 0, err[-2000:]
    from adapt.data import FolderDataset

    for domain in ("source", "target"):
        dataset = FolderDataset(tmp_path / "pair" / domain)
        assert len(dataset) == 8 and dataset[0]["image"].shape == (3, 48, 64)


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(REPO)) for p in (REPO / "recipes").rglob("*.yaml")))
def test_every_shipped_recipe_parses(recipe, capsys, monkeypatch):
    """Every recipe resolves (keys, types, class paths) as LightningCLI reads it; experiments are checked too."""
    from adapt.recipe import load_yaml
    from adapt.workflows.experiment import check_experiment

    monkeypatch.chdir(REPO)  # recipes name their files relative to the repository root
    doc = load_yaml(REPO / recipe)
    if "stages" in doc:
        assert check_experiment(doc, REPO / recipe)
        return
    code, out, err = adapt_main(capsys, "fit", "--config", recipe, "--print_config")
    assert code == 0, err
    assert "class_path: adapt." in out
