"""`adapt run`: stages reused only when their fingerprint and output match, stale ones moved aside and run again
(with the reason), --dry-run, a failed fit's own exit code and log, and evaluate / tta / fda stages read with their
verbs' option names and types."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, adapt_main

import adapt
from adapt.errors import ConfigError
from adapt.workflows import experiment, fingerprints, stages


@pytest.fixture(autouse=True)
def fixed_adapt(monkeypatch):
    """adapt's part of the fingerprints, fixed: other people's edits of adapt's files during a test session must
    not make these tests' results stale (tests below change it on purpose)."""
    monkeypatch.setattr(experiment, "adapt_identity", lambda: {"version": adapt.__version__, "source": "test"})


def write_fit_recipe(path, pair, **trainer):
    recipe = yaml.safe_load((REPO / "recipes/demo/source_only.yaml").read_text())
    recipe["trainer"].update(max_steps=2, max_epochs=None, limit_val_batches=0, log_every_n_steps=1, **trainer)
    recipe["data"] = {"class_path": "adapt.data.DomainDataModule",
                      "init_args": {"source_root": str(pair / "source"), "target_root": str(pair / "target"),
                                    "source_split": "train", "val_split": "val", "batch_size": 2}}
    path.write_text(yaml.safe_dump(recipe))
    return path


def write_experiment(folder, stage_list, name="e.yaml"):
    path = folder / name
    path.write_text(yaml.safe_dump({"output": "out", "stages": stage_list}, sort_keys=False))
    return path.name  # relative: the tests run in ``folder``


def tree(folder):
    """Every file and folder under ``folder``: relative path -> (size, mtime_ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def lines(text, prefix):
    return [line for line in text.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """A folder with a tiny synthetic pair (pair/), a fit recipe (f.yaml), an experiment (e.yaml: fit stage ``f``,
    evaluate stage ``ev`` of its checkpoint; OUT = out, every path relative) and its finished run; tests work on
    copies of it. Made once per session, also under pytest-xdist (as conftest's ``fit_run``: the first worker makes
    it, the others wait)."""
    from filelock import FileLock

    from adapt.data import synthetic

    shared = tmp_path_factory.getbasetemp()
    base = (shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared) / "runner_finished"
    base.mkdir(exist_ok=True)
    with FileLock(str(base) + ".lock"):
        if not (base / "out" / "summary.json").is_file():
            shutil.rmtree(base / "out", ignore_errors=True)  # an earlier, unfinished attempt
            synthetic.write_pair(base / "pair", num_images=24, size=(64, 64), seed=3)  # as conftest's tiny_pair
            write_fit_recipe(base / "f.yaml", Path("pair"))
            write_experiment(base, [{"name": "f", "fit": "f.yaml"},
                                    {"name": "ev", "evaluate": {"checkpoint": "${f}", "root": "pair/target",
                                                                "split": "val", "plots": False}}])
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(base)
                patch.setattr(experiment, "adapt_identity", lambda: {"version": adapt.__version__, "source": "test"})
                experiment.run_experiment("e.yaml")
    return base


@pytest.fixture
def copy(finished, tmp_path, monkeypatch):
    """A copy of the finished experiment (same fingerprints: its paths are relative), the working folder."""
    folder = tmp_path / "work"
    shutil.copytree(finished, folder)
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.slow
def test_a_second_run_reuses_everything_and_a_dry_run_changes_nothing(copy, capsys):
    record = json.loads((copy / "out" / "f" / "stage.json").read_text())
    assert record["output"]["sha256"] == fingerprints.file_sha256(copy / "out" / "f" / "checkpoints" / "last.ckpt")
    assert record["fingerprint"] == fingerprints.digest(record["parts"]) and record["parts"]["recipes"] == {
        "f.yaml": fingerprints.file_sha256(copy / "f.yaml")}
    assert "--config f.yaml" in (copy / "out" / "f" / "stage.log").read_text()  # the fit's command and output
    ev = json.loads((copy / "out" / "ev" / "stage.json").read_text())
    assert ev["parts"]["upstream"] == {"f": {"fingerprint": record["fingerprint"],
                                             "output": record["output"]["sha256"]}}
    before = tree(copy)
    code, stdout, err = adapt_main(capsys, "run", "e.yaml")
    assert code == 0, err[-3000:]
    assert len(lines(stdout, "== f: reused: ")) == 1 and len(lines(stdout, "== ev: reused: ")) == 1
    assert "runs" not in stdout
    rewritten = {"out", "out/summary.json", "out/cost.json"}  # only the summary and the cost are written again
    assert {k: v for k, v in tree(copy).items() if k not in rewritten} == \
        {k: v for k, v in before.items() if k not in rewritten}

    (copy / "f.yaml").write_text((copy / "f.yaml").read_text().replace("lr: 0.002", "lr: 0.003"))
    before = tree(copy)
    code, stdout, err = adapt_main(capsys, "run", "e.yaml", "--dry-run")
    assert code == 0, err[-3000:]
    assert lines(stdout, "  f: run: recipe f.yaml changed; its folder would move to out/.stale")
    assert lines(stdout, "  ev: run: upstream stage 'f' runs")
    assert tree(copy) == before  # nothing ran, nothing moved
    code, stdout, _ = adapt_main(capsys, "run", "e.yaml", "--seeds", "0", "1", "--dry-run")
    assert code == 0 and stdout.count("no record of a finished run") == 2 and tree(copy) == before  # seed_N: new


@pytest.mark.slow
def test_a_changed_recipe_runs_the_fit_and_its_evaluation_again(copy, capsys):
    old = json.loads((copy / "out" / "f" / "stage.json").read_text())
    (copy / "f.yaml").write_text((copy / "f.yaml").read_text().replace("lr: 0.002", "lr: 0.003"))
    code, stdout, err = adapt_main(capsys, "run", "e.yaml")
    assert code == 0, err[-3000:]
    stale_f = copy / "out" / ".stale" / f"f-{old['fingerprint'][:8]}-1"
    assert lines(stdout, f"== f: runs again: recipe f.yaml changed; the earlier run is kept in "
                         f"{stale_f.relative_to(copy)}")
    assert lines(stdout, "== ev: runs again: upstream stage 'f' ran again; the earlier run is kept in out/.stale/ev-")
    assert json.loads((stale_f / "stage.json").read_text()) == old  # the earlier run, whole
    assert fingerprints.file_sha256(stale_f / "checkpoints" / "last.ckpt") == old["output"]["sha256"]
    new = json.loads((copy / "out" / "f" / "stage.json").read_text())
    assert new["fingerprint"] != old["fingerprint"] and new["parts"]["stage"] == old["parts"]["stage"]
    assert len(list((copy / "out" / ".stale").glob("ev-*-1"))) == 1
    ev = json.loads((copy / "out" / "ev" / "stage.json").read_text())
    assert ev["parts"]["upstream"]["f"] == {"fingerprint": new["fingerprint"], "output": new["output"]["sha256"]}
    code, stdout, _ = adapt_main(capsys, "run", "e.yaml")
    assert code == 0 and len(lines(stdout, "== ")) == 3 and stdout.count(": reused: ") == 2  # + the summary


@pytest.mark.slow
def test_changed_arguments_run_the_fit_again(copy, capsys):
    code, stdout, err = adapt_main(capsys, "run", "e.yaml", "--trainer.max_steps=1")
    assert code == 0, err[-3000:]
    assert lines(stdout, "== f: runs again: arguments changed (none -> --trainer.max_steps=1); the earlier run is "
                 "kept in out/.stale/f-")
    assert lines(stdout, "== ev: runs again: upstream stage 'f' ran again")
    state = torch.load(copy / "out" / "f" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 1


@pytest.mark.slow
def test_a_replaced_checkpoint_runs_its_fit_and_what_reads_it_again(copy, capsys):
    last = copy / "out" / "f" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    name = next(k for k, v in state["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    state["state_dict"][name] += 0.5  # someone re-saved the file with other weights
    torch.save(state, last)
    replaced = fingerprints.file_sha256(last)
    code, stdout, err = adapt_main(capsys, "run", "e.yaml", "--dry-run")
    assert lines(stdout, "  f: run: its checkpoint changed since it finished")
    code, stdout, err = adapt_main(capsys, "run", "e.yaml")
    assert code == 0, err[-3000:]
    assert lines(stdout, "== f: runs again: its checkpoint changed since it finished; the earlier run is kept in ")
    assert lines(stdout, "== ev: runs again: upstream stage 'f' ran again")
    stale = next((copy / "out" / ".stale").glob("f-*-1"))
    assert fingerprints.file_sha256(stale / "checkpoints" / "last.ckpt") == replaced  # kept, not deleted


@pytest.mark.slow
def test_a_failed_fit_exits_with_its_own_code_and_names_its_log(tmp_path, tiny_pair, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # the fit process finds tests/helpers.py
    write_fit_recipe(tmp_path / "bad.yaml", tiny_pair)
    write_experiment(tmp_path, [{"name": "bad", "fit": "bad.yaml", "args": [
        "--trainer.callbacks+=helpers.PoisonBatch", "--trainer.callbacks.step=0"]}])
    code, stdout, err = adapt_main(capsys, "run", "e.yaml")
    # `adapt fit` exits 1 on a non-finite loss (TrainingStopped; tests/test_safety.py); 2 would be a bad input
    assert code == 1, err[-3000:]
    assert err.strip().splitlines()[-1] == ("adapt: error: e.yaml: stage 'bad': the fit failed with exit code 1; its "
                                            "log: out/bad/stage.log; finished stages are kept: fix the cause and run "
                                            "the same command again")
    log = (tmp_path / "out" / "bad" / "stage.log").read_text()
    assert "adapt: error: the loss is nan at step 0" in log and "the loss is nan at step 0" in stdout  # teed
    assert not (tmp_path / "out" / "bad" / "stage.json").exists()
    code, stdout, _ = adapt_main(capsys, "run", "e.yaml", "--dry-run")  # same inputs: continued in place
    assert code == 0 and lines(stdout, "  bad: run: an unfinished run with the same inputs; it would continue in place")


def test_every_protocol_is_reachable_from_a_stage(tmp_path, tiny_pair, segmenter_ckpt, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = {"checkpoint": str(segmenter_ckpt), "root": str(tiny_pair / "target"), "split": "val"}
    write_experiment(tmp_path, [
        {"name": "full", "evaluate": {**common, "protocol": "full", "examples": 2}},
        {"name": "resize", "evaluate": {**common, "protocol": "resize", "size": [96, 96], "plots": False}},
        {"name": "slide", "evaluate": {**common, "protocol": "slide", "window": [32, 32], "stride": [16, 16],
                                       "plots": False}}])
    code, stdout, err = adapt_main(capsys, "run", "e.yaml")
    assert code == 0, err[-3000:]
    out = tmp_path / "out"
    metrics = {name: json.loads((out / name / "metrics.json").read_text()) for name in ("full", "resize", "slide")}
    assert {name: m["protocol"]["mode"] for name, m in metrics.items()} == {n: n for n in metrics}
    assert metrics["resize"]["protocol"]["size"] == [96, 96]
    assert metrics["slide"]["protocol"]["window"] == [32, 32] and metrics["slide"]["protocol"]["stride"] == [16, 16]
    assert (out / "full" / "examples.png").is_file() and not (out / "resize" / "examples.png").exists()
    assert json.loads((out / "summary.json").read_text()) == metrics
    assert stdout.count("runs: no record of a finished run") == 3


@pytest.mark.parametrize("spec, words", [
    ({"protcol": "slide"}, ["unknown evaluate key 'protcol'; it takes root, checkpoint,"]),
    ({"size": "big"}, ["evaluate key 'size': 'big' is not of type tuple[int, int] | None"]),
    ({"examples": "many"}, ["evaluate key 'examples': 'many' is not of type int"]),
    ({"protocol": "sliding"}, ["evaluate key 'protocol': 'sliding' is not of type Literal['full', 'resize', 'slide']"]),
    ({"output": "x"}, ["evaluate key 'output': the runner sets it"]),
    ({"root": ["a", "b"]}, ["evaluate key 'root': a stage scores one dataset"]),
    ({"num_examples": 3}, ["unknown evaluate key 'num_examples'"]),
    ({"checkpoint": "${nothing}"}, ["${nothing} names no earlier stage with a checkpoint (known: output)"]),
])
def test_a_wrong_key_or_type_names_the_stage_and_the_key(tmp_path, capsys, monkeypatch, spec, words):
    monkeypatch.chdir(tmp_path)
    write_experiment(tmp_path, [{"name": "ev", "evaluate": {"checkpoint": "f.ckpt", "root": "data", **spec}}])
    code, stdout, err = adapt_main(capsys, "run", "e.yaml")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("adapt: error: e.yaml: stage 'ev': ") and all(w in err for w in words), err
    assert not (tmp_path / "out").exists()


def test_tta_and_fda_stages_take_their_verbs_options(tmp_path):
    where = "e.yaml: stage 's'"
    checked = stages.check_spec("fda", {"source": "s", "target": "t", "size": [32, 48]}, where)
    assert checked["size"] == (32, 48) and checked["beta"] == 0.01 and "seed" not in checked
    with pytest.raises(ConfigError, match=r"^e.yaml: stage 's': fda key 'seed': the runner sets it"):
        stages.check_spec("fda", {"source": "s", "target": "t", "seed": 1}, where)
    with pytest.raises(ConfigError, match=r"^e.yaml: stage 's': tta key 'method': 'bn' is not of type Literal"):
        stages.check_spec("tta", {"checkpoint": "c", "root": "r", "method": "bn"}, where)
    with pytest.raises(ConfigError, match=r"tta key 'root' is required"):
        stages.check_spec("tta", {"checkpoint": "c"}, where)


def fda_experiment(folder, pair, segmenter_ckpt, beta=0.05):
    return write_experiment(folder, [
        {"name": "fda", "fda": {"source": str(pair / "source"), "target": str(pair / "target"), "beta": beta,
                                "count": 3, "size": [32, 32]}},
        {"name": "ev", "evaluate": {"checkpoint": str(segmenter_ckpt), "translator": "${fda}",
                                    "root": str(pair / "target"), "split": "val", "plots": False}}])


def test_stale_stages_are_moved_aside_and_run_again_saying_why(tmp_path, tiny_pair, segmenter_ckpt, capsys,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    fda_experiment(tmp_path, tiny_pair, segmenter_ckpt)
    out = tmp_path / "out"

    def run(*args):
        code, stdout, err = adapt_main(capsys, "run", "e.yaml", *args)
        assert code == 0, err[-3000:]
        return stdout

    assert run().count("runs: no record of a finished run") == 2
    first = json.loads((out / "fda" / "stage.json").read_text())
    assert run().count(": reused: ") == 2
    fda_experiment(tmp_path, tiny_pair, segmenter_ckpt, beta=0.1)
    stdout = run()
    assert lines(stdout, f"== fda: runs again: the stage's settings changed (beta); the earlier run is kept in "
                         f"out/.stale/fda-{first['fingerprint'][:8]}-1")
    assert lines(stdout, "== ev: runs again: upstream stage 'fda' ran again; the earlier run is kept in out/.stale/ev-")
    stdout = run("--seed_everything=3")  # tta and fda stages get the run's seed; an evaluate stage takes none
    assert lines(stdout, "== fda: runs again: arguments changed (seed 0 -> seed 3)")
    assert lines(stdout, "== ev: runs again: upstream stage 'fda' ran again;")
    assert torch.load(out / "fda" / "fda.ckpt", weights_only=True)["record"]["seed"] == 3

    ckpt = torch.load(out / "fda" / "fda.ckpt", weights_only=True)
    ckpt["beta"] = 0.2  # replaced by hand
    torch.save(ckpt, out / "fda" / "fda.ckpt")
    stdout = run("--seed_everything=3")
    assert lines(stdout, "== fda: runs again: its checkpoint changed since it finished;")
    assert lines(stdout, "== ev: runs again: upstream stage 'fda' ran again;")

    # unfinished: an output without stage.json is used when started.json matches, moved aside otherwise
    (out / "fda" / "stage.json").unlink()
    mtime = (out / "fda" / "fda.ckpt").stat().st_mtime_ns
    stdout = run("--seed_everything=3")
    assert lines(stdout, "== fda: continues: an unfinished run with the same inputs")
    assert (out / "fda" / "fda.ckpt").stat().st_mtime_ns == mtime  # not written again
    assert lines(stdout, "== ev: runs again: upstream stage 'fda' ran again;")
    (out / "fda" / "stage.json").unlink()
    stdout = run()  # seed 0: other inputs than those it started with
    assert lines(stdout, "== fda: runs again: an unfinished run with other inputs; the earlier run is kept in "
                         "out/.stale/fda-")
    # a record from before fingerprints; adapt's code changed
    record = json.loads((out / "fda" / "stage.json").read_text())
    (out / "fda" / "stage.json").write_text(json.dumps({"checkpoint": record["checkpoint"], "seconds": 1.0}))
    monkeypatch.setattr(experiment, "adapt_identity", lambda: {"version": adapt.__version__, "source": "edited"})
    stdout = run("--dry-run")
    assert lines(stdout, "  fda: run: recorded before fingerprints; its folder would move to out/.stale")
    assert lines(stdout, "  ev: run: upstream stage 'fda' runs")
    monkeypatch.setattr(experiment, "adapt_identity", lambda: {"version": "9.9", "source": "edited"})
    (out / "fda" / "stage.json").write_text(json.dumps(record))
    stdout = run("--dry-run")
    assert lines(stdout, "  fda: run: adapt's version changed (0.1.0 -> 9.9)")
    assert len(list((out / ".stale").iterdir())) == 9  # every replaced run is still there


def test_file_hashes_read_a_file_once_per_version_and_the_source_digest(tmp_path, monkeypatch):
    reads = []
    real = fingerprints.file_sha256
    monkeypatch.setattr(fingerprints, "file_sha256", lambda path: reads.append(path) or real(path))
    hashes = fingerprints.FileHashes()
    (tmp_path / "a.ckpt").write_bytes(b"one")
    assert hashes(tmp_path / "a.ckpt") == hashes(tmp_path / "a.ckpt") == real(tmp_path / "a.ckpt")
    assert len(reads) == 1 and hashes(tmp_path / "missing") is None
    (tmp_path / "a.ckpt").write_bytes(b"other bytes")
    assert hashes(tmp_path / "a.ckpt") == real(tmp_path / "a.ckpt") and len(reads) == 2

    package = tmp_path / "package"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    digest = fingerprints.source_digest(package)
    (package / "README.md").write_text("documentation")
    assert fingerprints.source_digest(package) == digest  # only the *.py files count
    (package / "sub" / "b.py").write_text("y = 3\n")
    assert fingerprints.source_digest(package) != digest
    (package / "sub" / "b.py").write_text("y = 2\n")
    (package / "sub" / "b.py").rename(package / "sub" / "c.py")
    assert fingerprints.source_digest(package) != digest  # paths count too
    assert fingerprints.adapt_identity()["version"] == adapt.__version__


def test_files_named_by_path_and_library_versions_are_in_the_fingerprint(tmp_path, tiny_pair, segmenter_ckpt,
                                                                          capsys, monkeypatch):
    """A checkpoint given by path, a dataset's split list and the libraries' versions: each change re-runs."""
    monkeypatch.chdir(tmp_path)
    pair = tmp_path / "pair"
    shutil.copytree(tiny_pair, pair)
    shutil.copy(segmenter_ckpt, tmp_path / "f.ckpt")
    write_experiment(tmp_path, [{"name": "ev", "evaluate": {"checkpoint": "f.ckpt", "root": "pair/target",
                                                            "split": "val", "plots": False}}])

    def run(*args):
        code, stdout, err = adapt_main(capsys, "run", "e.yaml", *args)
        assert code == 0, err[-3000:]
        return stdout

    assert lines(run(), "== ev: runs: no record of a finished run")
    assert lines(run(), "== ev: reused: ")
    ckpt = torch.load("f.ckpt", weights_only=True)
    weight = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    ckpt["state_dict"][weight] = ckpt["state_dict"][weight] + 0.5  # F retrained by hand, same path
    torch.save(ckpt, "f.ckpt")
    assert lines(run(), "== ev: runs again: file f.ckpt changed;")
    split = pair / "target" / "splits" / "val.txt"
    split.write_text("\n".join(split.read_text().split()[:-1]) + "\n")  # one frame fewer to score
    stdout = run()
    assert lines(stdout, f"== ev: runs again: file {Path('pair/target/splits/val.txt')} changed;")
    assert json.loads((tmp_path / "out" / "ev" / "metrics.json").read_text())["num_images"] == len(
        split.read_text().split())
    identity = {"version": adapt.__version__, "source": "test", "libraries": {"torch": "0.0"}}
    monkeypatch.setattr(experiment, "adapt_identity", lambda: identity)
    assert lines(run("--dry-run"), "  ev: run: library versions changed (torch None -> 0.0)")


def test_a_seed_that_is_not_fixed_is_refused(tmp_path, tiny_pair, segmenter_ckpt, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fda_experiment(tmp_path, tiny_pair, segmenter_ckpt)
    code, _, err = adapt_main(capsys, "run", "e.yaml", "--seed_everything=true")
    assert code == 2 and "--seed_everything=true: an experiment needs a fixed seed" in err


def test_a_fit_stage_named_by_recipe_name_hashes_that_recipe_file():
    from adapt.catalogue import recipes_root

    parts = fingerprints.fingerprint_parts("fit", {"fit": "demo/source_only", "args": []}, [], 0, {}, {},
                                           fingerprints.FileHashes())
    path = str(recipes_root() / "demo" / "source_only.yaml")
    assert parts["recipes"] == {path: fingerprints.file_sha256(path)}
    assert parts["stage"]["fit"] == "demo/source_only"  # the name, wherever adapt is installed
