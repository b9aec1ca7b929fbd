"""The flagship recipes select the official DAFormer / HRDA / MIC settings (lhoyer/MIC at 2f932a98: the configs
daformer/gta2cs_uda_warm_fdthings_rcs_croppl_a999_daformer_mitb5_s0.py, hrda/gtaHR2csHR_hrda.py,
mic/gtaHR2csHR_mic_hrda.py and their _base_ files, written out below), every default resolved as jsonargparse
resolves it. Each component's behaviour under these settings is checked in tests/test_official_*.py and
tests/test_optimization.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from adapt.catalogue import recipe_file

# _base_/uda/dacs.py + dacs_a999_fdthings.py, schedules/adamw.py + poly10warm.py, the paramwise_cfg of the configs
SELF_TRAINING = {"lr": 6e-5, "head_lr_factor": 10.0, "weight_decay": 0.01, "encoder_norm_decay": False,
                 "optimizer": "adamw", "lr_schedule": "poly", "poly_power": 1.0, "warmup_steps": 1500,
                 "teacher": {"ema_alpha": 0.999, "pseudo_threshold": 0.968, "confidence_weighting": True,
                             "weighting": "batch", "mode": "train"},
                 "mixing": "classmix", "strong_augment": True, "loss_average": "all",
                 "feature_distance": {"weight": 0.005, "classes": None}, "arch": "daformer", "encoder_name": "mit_b5",
                 "norm": "train"}
HRDA = {"context_scale": 0.5, "detail_crop": [512, 512], "detail_loss_weight": 0.1}
MIC = {"ratio": 0.7, "block": 64 / 1024, "weight": 1.0, "record_statistics": True}
# _base_/datasets/uda_{gta,synthia}_to_cityscapes_512x512.py and the HR 1024x1024 ones; rare_class_sampling and
# crop_pseudo_margins / pseudo_weight_ignore_top, _bottom of the method configs
DATA = {"augment": "flip", "target_augment": "flip", "keep_ratio": True, "cat_max_ratio": 0.75, "batch_size": 2,
        "target_kind": "cityscapes", "target_split": "train"}
LOW = {"crop_size": [512, 512], "target_resize": [512, 1024], "pseudo_label_margins": [15, 120, 0, 0],
       "rare_class_sampling": {"temperature": 0.01, "min_pixels": 3000, "min_crop_ratio": 0.5}}
HIGH = {"crop_size": [1024, 1024], "target_resize": [1024, 2048], "pseudo_label_margins": [30, 240, 30, 30],
        "rare_class_sampling": {"temperature": 0.01, "min_pixels": 3000, "min_crop_ratio": 2.0}}
SOURCE_SIZE = {("gta5", False): [720, 1280], ("gta5", True): [1440, 2560], ("synthia", False): [760, 1280],
               ("synthia", True): [1520, 2560]}


def resolved(name: str) -> dict:
    """The recipe's configuration with every default filled in, as ``adapt fit --print_config`` gives it."""
    out = subprocess.run([sys.executable, "-m", "adapt.cli", "fit", "--config", str(recipe_file(name)),
                          "--print_config"], capture_output=True, text=True, check=True).stdout
    return yaml.safe_load(out)


@pytest.mark.parametrize("benchmark", ["gta5_to_cityscapes", "synthia_to_cityscapes"])
@pytest.mark.parametrize("method", ["daformer", "hrda", "mic"])
def test_flagship_recipe_selects_the_official_settings(benchmark, method):
    config = resolved(f"{benchmark}/{method}")
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    high = method != "daformer"
    for key, value in SELF_TRAINING.items():
        assert model[key] == value, key
    assert model["multi_resolution"] == (HRDA if high else None)
    assert model["masking"] == (MIC if method == "mic" else None)
    source = "synthia" if benchmark.startswith("synthia") else "gta5"
    expected = {**DATA, **(HIGH if high else LOW), "source_kind": source, "resize": SOURCE_SIZE[source, high]}
    for key, value in expected.items():
        assert data[key] == value, key
    trainer = config["trainer"]
    assert (trainer["max_steps"], trainer["precision"], config["seed_everything"]) == (40000, "32-true", 0)
