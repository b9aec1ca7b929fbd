"""One dialect for every verb (--output, --accelerator, typed --help), the old spellings as warned aliases, and the
shipped recipes by name: `adapt recipes`, `adapt fit --config NAME`, `adapt run NAME`."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO, adapt_main

from adapt.commands import VERBS, verb_parser
from adapt.errors import ConfigError
from adapt.workflows import stages

OLD = {"out", "device", "input_root", "output_root"}
READS_ONLY = {"data check"}  # a report on the console; every other verb writes a file or a folder
# the verbs that run a network themselves; run and demo run theirs in fit stages (--trainer.accelerator=...) and
# evaluate / tta stages (their accelerator key); export traces F on the CPU (the ONNX file is device-free and its
# check runs in onnxruntime's CPU provider); fda, compare, data synth and recipes run none
NETWORK = {"evaluate", "predict", "tta", "translate", "data gap"}


def options(verb: str) -> set[str]:
    return set(verb_parser(verb).get_defaults().keys())


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_speaks_the_dialect(verb):
    names = options(verb)
    assert not names & OLD, f"adapt {verb}: {sorted(names & OLD)}"
    if verb not in READS_ONLY:
        assert "output" in names, f"adapt {verb} writes: it takes --output"
    if verb in NETWORK:
        assert "accelerator" in names, f"adapt {verb} runs a network: it takes --accelerator"


def test_the_verb_lists_cover_every_verb():
    assert {"run", "demo", "recipes", "data gap"} <= set(VERBS)
    assert READS_ONLY | NETWORK <= set(VERBS)


@pytest.mark.parametrize("verb", [*VERBS, "fit"])
def test_every_verb_has_typed_help(verb, capsys):
    code, out, err = adapt_main(capsys, *verb.split(), "--help")
    assert code == 0, err
    assert out.startswith("usage:") and "(type: " in " ".join(out.split()), out[:500]  # jsonargparse's typed help


def test_run_help_keeps_its_positional_experiment(capsys):
    code, out, _ = adapt_main(capsys, "run", "--help")
    assert code == 0 and "positional arguments:" in out and "experiment" in out and "--dry_run" in out


def test_old_spellings_warn_once_and_work(tmp_path, capsys):
    code, out, err = adapt_main(capsys, "data", "synth", "--out", str(tmp_path / "pair"), "--num_images", "2",
                                "--size", "[32,32]")
    assert code == 0, err
    assert err.strip().splitlines() == ["adapt data synth: --out is deprecated; use --output"]
    assert (tmp_path / "pair" / "source" / "images").is_dir() and (tmp_path / "pair" / "target").is_dir()
    code, _, err = adapt_main(capsys, "data", "synth", f"--out={tmp_path / 'pair2'}", "--num_images", "2",
                              "--size", "[32,32]")  # the --key=value form too
    assert code == 0 and (tmp_path / "pair2" / "source").is_dir(), err


def test_every_old_spelling_maps_to_the_dialect(capsys):
    from adapt.commands import _undeprecated

    names = {"input", "output", "accelerator"}
    argv = ["--input_root", "a", "--output_root=b", "--device", "cpu", "--out", "c", "--outside", "d"]
    assert _undeprecated("x", argv, names) == ["--input", "a", "--output=b", "--accelerator", "cpu", "--output", "c",
                                               "--outside", "d"]
    assert _undeprecated("y", ["--out", "c"], {"out", "output"}) == ["--out", "c"]  # a verb's own option stays
    err = capsys.readouterr().err.splitlines()
    assert "adapt x: --device is deprecated; use --accelerator" in err and not any("adapt y" in e for e in err)


def test_an_old_stage_key_warns_and_works(capsys):
    checked = stages.check_spec("tta", {"checkpoint": "c.ckpt", "root": "r", "device": "cpu"}, "e.yaml: stage 'old'")
    assert checked["accelerator"] == "cpu"
    assert "e.yaml: stage 'old': tta: --device is deprecated; use --accelerator" in capsys.readouterr().err


def test_recipes_lists_the_shipped_recipes_with_their_first_header_line(capsys):
    code, out, err = adapt_main(capsys, "recipes")
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()}
    shipped = sorted(p.relative_to(REPO / "recipes").with_suffix("").as_posix()
                     for p in (REPO / "recipes").rglob("*.yaml"))
    assert sorted(rows) == shipped
    first = (REPO / "recipes/demo/source_only.yaml").read_text().splitlines()[0].lstrip("# ")
    assert rows["demo/source_only"].split(None, 1)[1] == first


def test_recipes_copies_a_name_a_folder_or_all_and_never_overwrites(tmp_path, capsys):
    code, out, err = adapt_main(capsys, "recipes", "--copy", "demo/source_only", "--output", str(tmp_path / "mine"))
    assert code == 0, err
    copied = tmp_path / "mine" / "demo" / "source_only.yaml"
    assert copied.read_bytes() == (REPO / "recipes/demo/source_only.yaml").read_bytes()
    assert out.strip() == f"wrote {copied}"
    copied.write_text("# edited\n")
    code, _, err = adapt_main(capsys, "recipes", "--copy", "demo", "--output", str(tmp_path / "mine"))
    assert code == 2 and err.strip() == (f"adapt: error: --copy: {copied} exists; remove it or give another --output "
                                         "(nothing was copied)")
    assert copied.read_text() == "# edited\n" and sorted(p.name for p in copied.parent.iterdir()) == [copied.name]
    code, _, err = adapt_main(capsys, "recipes", "--copy", "all", "--output", str(tmp_path / "all"))
    assert code == 0, err
    assert len(list((tmp_path / "all").rglob("*.yaml"))) == len(list((REPO / "recipes").rglob("*.yaml")))
    code, _, err = adapt_main(capsys, "recipes", "--copy", "nothing_like_it", "--output", str(tmp_path / "x"))
    assert code == 2 and "--copy: nothing_like_it is no shipped recipe or folder" in err
    code, _, err = adapt_main(capsys, "recipes", "--copy", "demo")
    assert code == 2 and "--copy: give --output DIR" in err


def test_fit_takes_a_shipped_recipe_name_from_an_empty_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = adapt_main(capsys, "fit", "--config", "demo/source_only", "--trainer.max_epochs=1",
                                "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                                "--data.init_args.num_images=16", "--trainer.enable_progress_bar=false",
                                "--trainer.logger=false")
    assert code == 0, err[-3000:]
    assert list((tmp_path / "runs" / "demo" / "source_only").rglob("last.ckpt"))
    code, _, err = adapt_main(capsys, "fit", "--config", "demo/no_such_recipe")
    assert code == 2 and err.count("\n") == 1 and "demo/no_such_recipe" in err


def test_run_takes_a_shipped_experiment_by_name_and_its_fit_stages_name_recipes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = adapt_main(capsys, "run", "demo/demo", "--dry-run", "--output", "d")
    assert code == 0, err
    assert "  source_only: run: no record of a finished run" in out and "plan of " in out
    assert not (tmp_path / "d").exists()
    doc = yaml.safe_load((REPO / "recipes/demo/demo.yaml").read_text())
    assert doc["output"] == "runs/demo" and doc["stages"][0]["fit"] == "demo/source_only"


def test_an_old_experiment_file_names_the_new_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({"out": "runs/x", "stages": [
        {"name": "f", "fit": "demo/source_only"}]}))
    code, _, err = adapt_main(capsys, "run", "old.yaml")
    assert code == 2 and err.strip() == ("adapt: error: old.yaml: 'out:' was renamed: write 'output: runs/x' (the "
                                         "folder everything goes to)")
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({"output": "runs/x", "stages": [
        {"name": "f", "fit": "demo/source_only", "args": ["--data.init_args.root=${out}/data"]}]}))
    code, _, err = adapt_main(capsys, "run", "old.yaml")
    assert code == 2 and "stage 'f': ${out} was renamed: write ${output}" in err
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({"output": "runs/x", "stages": [
        {"name": "f", "fit": "demo/sauce_only"}]}))
    code, _, err = adapt_main(capsys, "run", "old.yaml")
    assert code == 2 and "stage 'f': fit: demo/sauce_only is neither a file nor a shipped recipe name" in err


class Renamed:
    """A stand-in task with a renamed argument, as the self-training tasks rename theirs."""

    renamed_arguments = {"mask_ratio": "masking.ratio", "old_flag": "(it is always on)"}

    def __init__(self, masking: dict | None = None, lr: float = 0.1) -> None:
        self.masking, self.lr = masking, lr


def test_a_renamed_argument_names_its_new_key(tmp_path):
    from adapt.recipe import check_keys, check_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"class_path": f"{__name__}.Renamed", "init_args": {"lr": 0.2}}}))
    with pytest.raises(ConfigError) as error:  # an override on the command line, after the recipe
        check_recipe(["--config", str(recipe), "--model.init_args.mask_ratio=0.5"])
    assert str(error.value) == ("command line --model.init_args.mask_ratio: model.init_args.mask_ratio was renamed: "
                                "use model.init_args.masking.ratio")

    doc = {"model": {"class_path": f"{__name__}.Renamed", "init_args": {"mask_ratio": 0.5}}}
    with pytest.raises(ConfigError) as error:
        check_keys(doc, "r.yaml")
    assert str(error.value) == "r.yaml: model.init_args.mask_ratio was renamed: use model.init_args.masking.ratio"
    check_keys({"model": {"class_path": f"{__name__}.Renamed", "init_args": {"masking": {"ratio": 0.5}}}}, "r.yaml")
    with pytest.raises(ConfigError, match=r"^r.yaml: model.init_args.old_flag was removed \(it is always on\)$"):
        check_keys({"model": {"class_path": f"{__name__}.Renamed", "init_args": {"old_flag": True}}}, "r.yaml")
    with pytest.raises(ConfigError, match="unknown key 'model.init_args.l'"):
        check_keys({"model": {"class_path": f"{__name__}.Renamed", "init_args": {"l": 1}}}, "r.yaml")


def test_a_recipe_names_no_optimizer_the_cli_would_refuse():
    from adapt.recipe import check_keys

    for key in ("optimizer", "lr_scheduler"):
        with pytest.raises(ConfigError, match=f"unknown key '{key}'"):
            check_keys({key: {"class_path": "torch.optim.SGD"}}, "r.yaml")
