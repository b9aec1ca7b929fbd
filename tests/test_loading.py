"""One way to load F (``adapt.checkpoints.load_segmenter``): every verb and task takes the same F checkpoints (a fit's,
one ``adapt tta`` wrote, one written before checkpoints recorded their kind) and refuses a translator checkpoint with
the same line, whichever option named it."""

from importlib.util import find_spec
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import adapt_main, tiny_datamodule
from test_cli import tiny_recipe

from adapt.checkpoints import checkpoint_kind, load_checkpoint, load_segmenter
from adapt.errors import ConfigError
from adapt.tasks import SegmentationTask, TranslationTask
from adapt.workflows.tta import adapt_checkpoint

REFUSAL = "{option}: {path} is a translator checkpoint; give an F (segmenter) checkpoint: adapt fit of a " \
          "segmentation or self-training recipe"
F_KINDS = ("fit", "tta", "legacy")  # the F checkpoints every route must take
T_KINDS = ("translator", "legacy_translator")  # and the translator checkpoints it must refuse


def without_kind(source: Path, path: Path) -> Path:
    """``source`` as earlier versions wrote it: no ``kind`` in the dict."""
    ckpt = torch.load(source, map_location="cpu", weights_only=True)
    del ckpt["kind"]
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(fit_run, tiny_pair, tmp_path_factory) -> dict[str, Path]:
    """fit: the session's ``adapt fit`` last.ckpt (FPN); tta: AdaBN of it by ``adapt tta``'s function; legacy: the
    fit's without its kind; translator: a TranslationTask after one iteration (ngf 8, one block), saved by Lightning;
    legacy_translator: that one without its kind."""
    folder = tmp_path_factory.mktemp("loading")
    (fit,) = fit_run.rglob("last.ckpt")
    adapt_checkpoint(str(fit), str(tiny_pair / "target"), str(folder / "tta.ckpt"), split="val", batch_size=2)
    task = TranslationTask(ngf=8, n_blocks=1, ndf=8, pool_size=2)
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=folder)
    trainer.fit(task, tiny_datamodule(tiny_pair))
    trainer.save_checkpoint(folder / "t.ckpt")
    return {"fit": fit, "tta": folder / "tta.ckpt", "legacy": without_kind(fit, folder / "legacy.ckpt"),
            "translator": folder / "t.ckpt", "legacy_translator": without_kind(folder / "t.ckpt", folder / "lt.ckpt")}


def test_checkpoints_record_their_kind_and_old_ones_are_recognised(checkpoints):
    kinds = {name: load_checkpoint(path).get("kind") for name, path in checkpoints.items()}
    assert kinds == {"fit": "segmenter", "tta": "segmenter", "legacy": None, "translator": "translator",
                     "legacy_translator": None}
    guessed = {name: checkpoint_kind(load_checkpoint(path)) for name, path in checkpoints.items()}
    assert guessed == {"fit": "segmenter", "tta": "segmenter", "legacy": "segmenter", "translator": "translator",
                       "legacy_translator": "translator"}
    assert checkpoint_kind({"kind": "something else", "state_dict": {}}) is None


def test_the_loaded_f_carries_its_classes_and_normalisation(checkpoints, tiny_pair):
    fit, legacy, tta = (load_segmenter(checkpoints[name]) for name in ("fit", "legacy", "tta"))
    assert fit.class_names == tiny_datamodule(tiny_pair).class_names and fit.ignore_index == 255
    assert fit.hyper_parameters["arch"] == "fpn" and not fit.segmenter.training
    state = load_checkpoint(checkpoints["fit"])["state_dict"]
    assert torch.equal(fit.segmenter.mean, state["segmenter.mean"])  # the statistics saved with F
    weights = fit.segmenter.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in legacy.segmenter.state_dict().items())
    assert legacy.class_names == fit.class_names
    adapted = {k for k, v in tta.segmenter.state_dict().items() if not torch.equal(v, weights[k])}
    assert adapted and all("running" in k or "num_batches" in k for k in adapted)  # AdaBN: statistics only


def test_loading_f_leaves_the_callers_random_state_alone(checkpoints, tiny_pair):
    """init_from runs inside a fit, after seeding: building the network to load into must not draw from the global
    RNG, or every later draw of the fit (dropout, drop path) changes with the loader (it once did: MIC's numbers)."""
    torch.manual_seed(7)
    expected = torch.rand(4)
    task = SegmentationTask(arch="fpn", class_names=tiny_datamodule(tiny_pair).class_names)
    torch.manual_seed(7)
    load_segmenter(checkpoints["fit"])
    task.init_from(checkpoints["fit"])
    assert torch.equal(torch.rand(4), expected)


def verb_args(verb: str, checkpoint: Path, pair: Path, out: Path) -> list[str]:
    """A cheap run of ``verb`` on F ``checkpoint``: evaluate, predict and tta on the target's 6 val images."""
    given = ["--checkpoint", str(checkpoint)]
    target = [*given, "--root", str(pair / "target"), "--split", "val"]
    return {"evaluate": ["evaluate", *target, "--output", str(out), "--plots", "false"],
            "predict": ["predict", *target, "--output", str(out)],
            "export": ["export", *given, "--output", str(out / "f.onnx"), "--check", "false"],
            "tta": ["tta", *target, "--output", str(out / "f.ckpt"), "--batch_size", "2"]}[verb]


VERBS = ("evaluate", "predict", *(["export"] if find_spec("onnx") and find_spec("onnxruntime") else []), "tta")


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("name", F_KINDS)
def test_every_verb_takes_every_f_checkpoint(verb, name, checkpoints, tiny_pair, tmp_path, capsys):
    code, _, err = adapt_main(capsys, *verb_args(verb, checkpoints[name], tiny_pair, tmp_path / "out"))
    assert code == 0, err[-3000:]
    if verb == "tta":  # its output is an F checkpoint like any other, also when its input predates kinds
        assert load_checkpoint(tmp_path / "out" / "f.ckpt")["kind"] == "segmenter"


@pytest.mark.parametrize("name", F_KINDS)
def test_the_tasks_take_every_f_checkpoint(name, checkpoints, tiny_pair):
    """init_from of a segmentation fit and the translation task's frozen F (CyCADA) get the F the verbs get."""
    names = tiny_datamodule(tiny_pair).class_names
    expected = load_segmenter(checkpoints[name]).segmenter.state_dict()
    task = SegmentationTask(arch="fpn", class_names=names)
    assert task.init_from(checkpoints[name])["shared"] == names
    translation = TranslationTask(ngf=8, n_blocks=1, ndf=8, lambda_semantic=1.0, class_names=names,
                                  segmenter_checkpoint=str(checkpoints[name]))
    translation.setup("fit")
    for f in (task.segmenter, translation.segmenter):
        assert all(torch.equal(v, expected[k]) for k, v in f.state_dict().items())


@pytest.mark.parametrize("name", T_KINDS)
def test_every_verb_and_task_refuses_a_translator_with_the_same_line(name, checkpoints, tiny_pair, tmp_path, capsys):
    """Through the real CLI: the four verbs, ``adapt fit`` with init_from, and ``adapt fit`` of a CyCADA translator
    whose semantic-consistency F is a translator, ``adapt validate --ckpt_path``; and Lightning's own restore
    (``ckpt_path``) of a SegmentationTask."""
    path, lines = checkpoints[name], {}
    for verb in VERBS:
        lines[verb] = adapt_main(capsys, *verb_args(verb, path, tiny_pair, tmp_path / verb))
    (tmp_path / "cycada").mkdir()
    translation = {"class_path": "adapt.tasks.TranslationTask",
                   "init_args": {"ngf": 8, "n_blocks": 1, "ndf": 8, "lambda_semantic": 1.0}}
    for route, recipe in (("init_from", tiny_recipe(tmp_path, tiny_pair)),
                          ("segmenter_checkpoint", tiny_recipe(tmp_path / "cycada", tiny_pair, model=translation))):
        lines[route] = adapt_main(capsys, "fit", "--config", str(recipe), f"--model.init_args.{route}={path}",
                                  f"--trainer.default_root_dir={tmp_path / 'runs'}", "--trainer.limit_val_batches=0")
    lines["ckpt_path"] = adapt_main(capsys, "validate", "--config", str(tiny_recipe(tmp_path, tiny_pair)),
                                    f"--ckpt_path={path}")
    options = {"init_from": "model.init_args.init_from", "segmenter_checkpoint": "model.init_args.segmenter_checkpoint",
               "ckpt_path": "--ckpt_path"}
    for route, (code, _, err) in lines.items():
        expected = "adapt: error: " + REFUSAL.format(option=options.get(route, "--checkpoint"), path=path)
        assert code == 2 and err.strip().splitlines()[-1] == expected, (route, err[-2000:])
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # refused before any step
    dm = tiny_datamodule(tiny_pair)
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    with pytest.raises(ConfigError) as refused:
        trainer.validate(SegmentationTask(arch="fpn", class_names=dm.class_names), dm, ckpt_path=path)
    assert str(refused.value) == REFUSAL.format(option="--ckpt_path", path=path)


def test_an_f_where_a_translator_is_expected_is_refused_alike(checkpoints, tiny_pair, tmp_path, capsys):
    f = checkpoints["fit"]
    wanted = ("is an F (segmenter) checkpoint; give a translator checkpoint: adapt fit of a translation recipe, "
              "or adapt fda")
    translate = adapt_main(capsys, "translate", "--checkpoint", str(f), "--direction", "target-to-source", "--input",
                           str(tiny_pair / "target"), "--output", str(tmp_path / "translated"))
    evaluate = adapt_main(capsys, *verb_args("evaluate", f, tiny_pair, tmp_path / "evaluate"), "--translator", str(f))
    for (code, _, err), option in ((translate, "--checkpoint"), (evaluate, "--translator")):
        assert code == 2 and err.strip().splitlines()[-1] == f"adapt: error: {option}: {f} {wanted}", err[-2000:]
