"""What a run costs (adapt.cost): the ``cost`` of run.json, metrics.json and an experiment's stages and totals; the
grid setting; ``cost: null``; a codecarbon failure, which never fails a run; the benchmarks' cost columns."""

from __future__ import annotations

import json
import logging
import time

import codecarbon
import pytest
import yaml
from codecarbon.input import DataSource
from conftest import REPO, adapt_main, benchmark_module

from adapt.cost import Cost, Tracker, cost_argument, cost_from_args
from adapt.errors import ConfigError
from adapt.workflows.stages import add_up, stage_cost


def check_record(cost: dict, devices: int = 1) -> None:
    """A measured record: wall time, device hours = wall hours x devices, energy, emissions = energy x intensity."""
    assert "error" not in cost, cost
    assert cost["wall_seconds"] > 0 and cost["devices"] == devices
    assert cost["device_hours"] == pytest.approx(cost["wall_seconds"] / 3600 * devices, abs=1e-6)
    assert cost["device_hours_unit"].startswith("CPU process hours")  # this machine has no GPU
    assert cost["energy_kwh"] >= 0 and cost["carbon_intensity"] >= 0
    assert cost["emissions_kg"] == pytest.approx(cost["energy_kwh"] * cost["carbon_intensity"] / 1000, rel=1e-6,
                                                 abs=1e-15)
    assert cost["tool"].startswith("codecarbon 3.") and "CPU: " in cost["measured"]


class Refusing:
    """A codecarbon tracker that cannot start (a broken install, an unreadable sensor)."""

    def __init__(self, **kwargs) -> None:
        raise RuntimeError("no power meter\n here")


class Swallowing:
    """A tracker whose start() fails the way codecarbon's does: the exception logged, nothing measured."""

    def __init__(self, **kwargs) -> None:
        pass

    def start(self) -> None:
        try:
            raise OSError("RAPL unreadable")
        except OSError:
            logging.getLogger("codecarbon").warning("graceful shutdown. Exceptions:", exc_info=True)

    def stop(self) -> None:
        return None


def test_the_grid_setting_sets_the_intensity_and_so_the_emissions():
    """The same work, three grids: codecarbon's world average (the default, and the record says so), France's
    energy mix, an intensity given in g/kWh; emissions = energy x that intensity in each record."""
    expected = {Cost(): DataSource().get_carbon_intensity_per_source_data()["world_average"],
                Cost(country_iso_code="fra"): DataSource().get_global_energy_mix_data()["FRA"]["carbon_intensity"],
                Cost(country_iso_code="FRA", carbon_intensity=123.0): 123.0}
    for settings, intensity in expected.items():
        with Tracker(settings) as tracker:
            time.sleep(0.3)
        check_record(tracker.record)
        assert tracker.record["carbon_intensity"] == pytest.approx(intensity)
        assert tracker.record["energy_kwh"] > 0  # codecarbon's RAM and CPU estimates over 0.3 s
    assert "world average" in Tracker(Cost()).start().stop()["carbon_intensity_source"]
    assert "France (FRA" in Tracker(Cost(country_iso_code="FRA")).start().stop()["carbon_intensity_source"]
    assert not list(REPO.glob("emissions*.csv"))  # nothing written beside the user's files
    handlers = logging.getLogger("codecarbon").handlers  # codecarbon's own again, once each tracker stopped
    assert handlers and not [h for h in handlers if type(h).__module__ == "adapt.cost"]


@pytest.mark.parametrize("kwargs, words", [
    ({"country_iso_code": "FR"}, "cost.country_iso_code: 'FR'; give a 3-letter ISO code"),
    ({"country_iso_code": "ZZZ"}, "cost.country_iso_code: ZZZ is not in codecarbon's table"),
    ({"carbon_intensity": -5}, "cost.carbon_intensity: -5; give g CO2-eq per kWh")])
def test_a_bad_setting_is_one_line_naming_the_key(kwargs, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        Cost(**kwargs)


def test_the_setting_travels_as_one_argument():
    for cost in (None, Cost(), Cost(country_iso_code="DEU"), Cost(carbon_intensity=12.5)):
        assert cost_from_args(["--trainer.max_steps=2", cost_argument(cost)]) == cost
    assert cost_from_args(["--cost.country_iso_code=usa"]) == Cost(country_iso_code="USA")
    assert cost_from_args(["--seed_everything=3"]) == Cost()


@pytest.mark.parametrize("broken, words", [(Refusing, "RuntimeError: no power meter here"),
                                           (Swallowing, "OSError: RAPL unreadable")])
def test_a_codecarbon_failure_is_an_error_line_beside_the_wall_time(monkeypatch, broken, words):
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", broken)
    with Tracker(Cost()) as tracker:
        time.sleep(0.05)
    record = tracker.record
    assert record["error"] == f"codecarbon: {words}" and record["wall_seconds"] >= 0.05
    assert "energy_kwh" not in record and "emissions_kg" not in record


def test_a_fit_records_what_it_cost(fit_run):
    """conftest's `adapt fit` (tracker on by default): run.json's cost, on the CPU estimated from the TDP."""
    record = json.loads(next(fit_run.rglob("run.json")).read_text())
    assert record["status"] == "finished"
    cost = record["cost"]
    check_record(cost)
    assert cost["nodes"] == 1 and cost["device"] == "cpu"
    assert "world average" in cost["carbon_intensity_source"]
    assert "codecarbon" not in (fit_run / "stdout.txt").read_text()  # its log is kept in the record, not printed
    assert not list(fit_run.rglob("emissions*.csv"))


def _fit(capsys, tmp_path, tiny_pair, *args):
    from test_cli import tiny_recipe

    recipe = tiny_recipe(tmp_path, tiny_pair)
    code, _, err = adapt_main(capsys, "fit", "--config", str(recipe), f"--trainer.default_root_dir={tmp_path}/run",
                              "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
                              "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false", *args)
    assert code == 0, err[-3000:]
    return json.loads(next((tmp_path / "run").rglob("run.json")).read_text())


def test_cost_null_starts_no_tracker_and_keeps_the_wall_time(capsys, tmp_path, tiny_pair, monkeypatch):
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", Refusing)  # would leave an error if it started
    record = _fit(capsys, tmp_path, tiny_pair, "--cost", "null")
    assert record["status"] == "finished"
    cost = record["cost"]
    assert cost["tracker"] == "off (cost: null)" and cost["wall_seconds"] > 0 and "error" not in cost
    assert cost["device_hours"] == pytest.approx(cost["wall_seconds"] / 3600, abs=1e-6)
    assert not {"energy_kwh", "emissions_kg"} & set(cost)


def test_a_tracker_that_fails_leaves_the_fit_finished_with_an_error_line(capsys, tmp_path, tiny_pair, monkeypatch):
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", Refusing)
    record = _fit(capsys, tmp_path, tiny_pair)
    assert record["status"] == "finished" and record["step"] == 1
    assert record["cost"]["error"] == "codecarbon: RuntimeError: no power meter here"
    assert record["cost"]["wall_seconds"] > 0


def test_a_recipe_sets_the_grid_as_a_top_level_key(capsys, tmp_path, tiny_pair):
    from test_cli import tiny_recipe

    recipe = tiny_recipe(tmp_path, tiny_pair, cost={"carbon_intensity": 250.0})
    code, _, err = adapt_main(capsys, "fit", "--config", str(recipe), f"--trainer.default_root_dir={tmp_path}/run",
                              "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
                              "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false")
    assert code == 0, err[-3000:]
    cost = json.loads(next((tmp_path / "run").rglob("run.json")).read_text())["cost"]
    check_record(cost)
    assert cost["carbon_intensity"] == 250.0 and cost["carbon_intensity_source"] == "set: cost.carbon_intensity"
    config = yaml.safe_load(next((tmp_path / "run").rglob("config.yaml")).read_text())
    assert config["cost"] == {"country_iso_code": None, "carbon_intensity": 250.0}  # config.yaml re-runs the same
    code, _, err = adapt_main(capsys, "fit", "--config", str(recipe), "--cost.country_iso_code=ZZZ")
    assert code == 2 and "cost.country_iso_code: ZZZ is not in codecarbon's table" in err


def test_evaluate_records_what_scoring_cost(segmenter_ckpt, tiny_pair, tmp_path, capsys):
    common = ["evaluate", "--checkpoint", str(segmenter_ckpt), "--root", str(tiny_pair / "target"), "--split", "val",
              "--plots", "false"]
    code, _, err = adapt_main(capsys, *common, "--output", str(tmp_path / "a"), "--cost.carbon_intensity", "100")
    assert code == 0, err[-3000:]
    cost = json.loads((tmp_path / "a" / "metrics.json").read_text())["cost"]
    check_record(cost)
    assert cost["carbon_intensity"] == 100.0
    code, _, err = adapt_main(capsys, *common, "--output", str(tmp_path / "b"), "--cost", "null")
    assert code == 0, err[-3000:]
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["cost"]["tracker"] == "off (cost: null)"


def _stages(segmenter_ckpt, tiny_pair) -> list[dict]:
    target = str(tiny_pair / "target")
    return [{"name": "adabn", "tta": {"checkpoint": str(segmenter_ckpt), "root": target, "split": "train"}},
            {"name": "ev", "evaluate": {"checkpoint": "${adabn}", "root": target, "split": "val", "plots": False}}]


def test_an_experiment_adds_up_its_stages_costs(segmenter_ckpt, tiny_pair, tmp_path, capsys, monkeypatch):
    """A tta and an evaluate stage: OUT/cost.json has each stage's record (the evaluate stage's is its
    metrics.json's: measured once) and their sums; ``--cost null`` reaches every stage and does not make a
    finished stage run again."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"output": "out", "stages": _stages(segmenter_ckpt, tiny_pair)}))
    code, out, err = adapt_main(capsys, "run", "e.yaml")
    assert code == 0, err[-3000:]
    found = json.loads((tmp_path / "out" / "cost.json").read_text())
    stages = found["stages"]
    for name in ("adabn", "ev"):
        check_record(stages[name])
        assert json.loads((tmp_path / "out" / name / "stage.json").read_text())["cost"] == stages[name]
    assert stages["ev"] == json.loads((tmp_path / "out" / "ev" / "metrics.json").read_text())["cost"]
    total = found["total"]
    assert total["wall_seconds"] == pytest.approx(stages["adabn"]["wall_seconds"] + stages["ev"]["wall_seconds"])
    assert total["energy_kwh"] == pytest.approx(stages["adabn"]["energy_kwh"] + stages["ev"]["energy_kwh"])
    assert total["emissions_kg"] == pytest.approx(stages["adabn"]["emissions_kg"] + stages["ev"]["emissions_kg"])
    assert total["device_hours"] == {"CPU process hours": pytest.approx(
        stages["adabn"]["device_hours"] + stages["ev"]["device_hours"])}
    assert total["records"] == 2 and total["without_energy"] == 0 and found["stages_without_cost"] == []
    assert "stages' cost: " in out and " Wh, " in out

    code, out, err = adapt_main(capsys, "run", "e.yaml", "--output", "off", "--cost", "null")
    assert code == 0, err[-3000:]
    found = json.loads((tmp_path / "off" / "cost.json").read_text())
    assert {s["tracker"] for s in found["stages"].values()} == {"off (cost: null)"}
    assert found["total"]["without_energy"] == 2 and "energy_kwh" not in found["total"]
    code, out, err = adapt_main(capsys, "run", "e.yaml", "--cost", "null")  # the first run's folder
    assert code == 0 and out.count(": reused: finished earlier with the same inputs") == 2, err[-3000:]


@pytest.mark.slow
def test_an_experiment_over_seeds_carries_its_fit_stages_costs(tiny_pair, tmp_path, capsys, monkeypatch):
    """A fit stage (its own process) and an evaluate stage, one seed: the fit reads the run's --cost, its run.json
    feeds the seed's cost.json and the summary's cost per stage and seed; the setting is no part of the fit's
    fingerprint."""
    from test_runner import write_fit_recipe

    monkeypatch.chdir(tmp_path)
    write_fit_recipe(tmp_path / "f.yaml", tiny_pair)
    stage_list = [{"name": "f", "fit": "f.yaml"},
                  {"name": "ev", "evaluate": {"checkpoint": "${f}", "root": str(tiny_pair / "target"),
                                              "split": "val", "plots": False}}]
    (tmp_path / "e.yaml").write_text(yaml.safe_dump({"output": "out", "stages": stage_list}))
    code, _, err = adapt_main(capsys, "run", "e.yaml", "--seeds", "0", "--cost.carbon_intensity", "100")
    assert code == 0, err[-3000:]
    seed = tmp_path / "out" / "seed_0"
    fit = json.loads(next((seed / "f").rglob("run.json")).read_text())["cost"]
    check_record(fit)
    assert fit["carbon_intensity"] == 100.0  # the run's setting reached the fit's process
    assert stage_cost(seed / "f", "fit", {}) == fit
    per_seed = json.loads((seed / "cost.json").read_text())
    assert per_seed["stages"]["f"] == fit and per_seed["stages"]["ev"]["carbon_intensity"] == 100.0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cost"]["stages"] == {name: {"0": cost} for name, cost in per_seed["stages"].items()}
    assert summary["cost"]["total"] == add_up(list(per_seed["stages"].values())) == per_seed["total"]
    code, out, err = adapt_main(capsys, "run", "e.yaml", "--seeds", "0")  # default setting: nothing runs again
    assert code == 0 and out.count(": reused: finished earlier with the same inputs") == 2, err[-3000:]



def test_the_camvid_table_has_energy_per_seed_from_the_stage_records(tmp_path):
    """Hand-written records: a row's Wh/seed is the mean over seeds of its stages' summed energy (a fit stage's
    from its run.json); a row with one record without cost shows '-'."""
    camvid_table, seeds = benchmark_module("camvid_table"), [0, 1]
    energy = {0: 0.002, 1: 0.004}  # kWh of the source-only fit per seed
    for seed in seeds:
        for label, (evaluation, costs) in camvid_table.ROWS.items():
            metrics = {"miou": 30.0, "per_image": {"names": ["f0"], "intersection": [[3, 3]], "union": [[10, 10]],
                                                   "pixels": [20], "correct": [6]}}
            for name, record in [(evaluation, {"metrics": metrics}),
                                 *((c, {"checkpoint": "x", "seconds": 60.0}) for c in costs)]:
                (tmp_path / f"seed_{seed}" / name).mkdir(parents=True, exist_ok=True)
                (tmp_path / f"seed_{seed}" / name / "stage.json").write_text(json.dumps(record))
            (tmp_path / f"seed_{seed}" / evaluation / "metrics.json").write_text(json.dumps(metrics))
        run = tmp_path / f"seed_{seed}" / "source_only" / "lightning_logs" / "version_0"
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"cost": {"wall_seconds": 60.0, "energy_kwh": energy[seed],
                                                           "emissions_kg": 0.001}}))
    lines = camvid_table.table(tmp_path, seeds).splitlines()
    assert "Wh/seed" in lines[0]
    source_only = next(line for line in lines if line.startswith("source only"))
    assert source_only.split()[-3] == "3" and source_only.split()[-4] == "1.0"  # (2 + 4) / 2 Wh; 60 s per seed
    randomized = next(line for line in lines if line.startswith("domain randomization"))
    assert randomized.split()[-3] == "-"  # its fit's records carry no cost


def test_gpu_check_prints_energy_per_100_iterations():
    gpu_check = benchmark_module("gpu_check")
    cost = {"energy_kwh": 0.05, "emissions_kg": 0.02, "carbon_intensity": 400.0, "device_hours": 0.1,
            "device_hours_unit": "GPU hours (wall hours x devices)", "measured": "GPU: NVML"}
    line = gpu_check.energy_line({"cost": cost, "steps": 200}, dry_run=False)
    assert line.startswith("MIC energy: 25 Wh per 100 iterations (50 Wh for 200, 0.1 GPU hours, 10 g CO2-eq")
    assert "not measured (codecarbon: X)" in gpu_check.energy_line({"cost": {"error": "codecarbon: X"}, "steps": 2},
                                                                  dry_run=True)
