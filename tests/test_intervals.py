"""Per-image counts in metrics.json, bootstrap intervals of mIoU over frames and seeds, and `adapt compare`."""

import json

import numpy as np
import pytest
import torch
from conftest import adapt_main
from PIL import Image

from adapt.errors import ConfigError
from adapt.intervals import miou_from_counts, miou_interval, paired_difference, per_image_record, stack_runs
from adapt.metrics import confusion_matrices, confusion_matrix, image_counts, mean_iou

# 3 images, 2 classes, written out: class 0 has I/U 2/3, 1/2, 0/1 (sum 3/6), class 1 0/0, 1/2, 3/4 (sum 4/6)
INTERSECTION = [[2, 0], [1, 1], [0, 3]]
UNION = [[3, 0], [2, 2], [1, 4]]


def record(names, intersection, union) -> dict:
    """A per_image record as metrics.json holds it (pixels and correct are not read by the intervals)."""
    return {"names": list(names), "intersection": np.asarray(intersection).tolist(),
            "union": np.asarray(union).tolist(), "pixels": [0] * len(names), "correct": [0] * len(names)}


def random_counts(rng, images=30, classes=4, seeds=1):
    """int [S, N, C] intersection <= union, some classes absent from some images."""
    union = rng.integers(0, 50, size=(seeds, images, classes)) * (rng.random((seeds, images, classes)) < 0.7)
    return rng.integers(0, union + 1), union


def test_per_image_counts_sum_to_the_confusion_matrix():
    rng = torch.Generator().manual_seed(0)
    pred, target = torch.randint(0, 5, (3, 9, 7), generator=rng), torch.randint(0, 5, (3, 9, 7), generator=rng)
    target[0, :4] = 255
    target[1] = torch.where(target[1] == 4, 255, target[1])  # class 4 absent from labels in image 1
    cm = confusion_matrix(pred, target, 5)
    assert cm.sum() == (target != 255).sum()
    counts = image_counts(confusion_matrices(pred, target, 5))
    assert torch.equal(counts["intersection"].sum(0), cm.diagonal())
    assert torch.equal(counts["union"].sum(0), cm.sum(0) + cm.sum(1) - cm.diagonal())
    assert counts["pixels"].tolist() == (target != 255).sum((1, 2)).tolist()
    assert counts["correct"].tolist() == ((pred == target) & (target != 255)).sum((1, 2)).tolist()
    for i in range(3):
        assert torch.equal(confusion_matrices(pred, target, 5)[i], confusion_matrix(pred[i], target[i], 5))
    assert miou_from_counts(counts["intersection"].numpy(), counts["union"].numpy()) == pytest.approx(mean_iou(cm))
    rec = per_image_record([{"names": ["a", "b"], **{k: v[:2] for k, v in counts.items()}},
                            {"names": ["c"], **{k: v[2:] for k, v in counts.items()}}])
    assert rec["names"] == ["a", "b", "c"] and rec["intersection"] == counts["intersection"].tolist()
    assert all(isinstance(v, int) for v in rec["union"][0] + rec["pixels"])


def test_miou_from_counts_by_hand():
    assert miou_from_counts(INTERSECTION, UNION) == pytest.approx((3 / 6 + 4 / 6) / 2)
    # a class absent from labels and predictions (union 0 everywhere) does not count
    assert miou_from_counts(np.c_[INTERSECTION, [0, 0, 0]], np.c_[UNION, [0, 0, 0]]) == pytest.approx(7 / 12)
    assert miou_from_counts([[1, 0]], [[1, 0]]) == 1.0 and np.isnan(miou_from_counts([[0, 0]], [[0, 0]]))


def reference_interval(intersection, union, resamples, seed, level=0.95):
    """The bootstrap written out with loops: the same draws as adapt.intervals' documentation says."""
    seeds, images = len(intersection), len(intersection[0])
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, images, size=(resamples, images))
    picks = rng.integers(0, seeds, size=(resamples, seeds))
    values = []
    for r in range(resamples):
        per_seed = []
        for s in picks[r]:
            ious = []
            for c in range(len(intersection[0][0])):
                i = sum(intersection[s][n][c] for n in frames[r])
                u = sum(union[s][n][c] for n in frames[r])
                if u > 0:
                    ious.append(i / u)
            per_seed.append(sum(ious) / len(ious))
        values.append(sum(per_seed) / len(per_seed))
    return tuple(np.percentile(values, [50 * (1 - level), 50 * (1 + level)]))


def test_interval_matches_a_reimplementation_and_contains_the_estimate():
    low, high = reference_interval([INTERSECTION], [UNION], 40, seed=5)
    assert miou_interval(INTERSECTION, UNION, 40, seed=5) == pytest.approx((7 / 12, low, high), abs=1e-12)
    intersection, union = random_counts(np.random.default_rng(1), images=12, classes=3, seeds=3)
    mean, low, high = miou_interval(intersection, union, 60, seed=2, level=0.9)
    assert (low, high) == pytest.approx(reference_interval(intersection, union, 60, 2, 0.9), abs=1e-12)
    assert mean == pytest.approx(np.mean([miou_from_counts(i, u) for i, u in zip(intersection, union)]))
    assert low <= mean <= high and low < high
    same = miou_interval([[1, 3]] * 5, [[2, 4]] * 5, 50)  # every frame alike: every resample gives the same mIoU
    assert same == pytest.approx((0.625, 0.625, 0.625))


def test_paired_difference():
    intersection, union = random_counts(np.random.default_rng(3), images=20, seeds=3)
    same = paired_difference(intersection, union, intersection, union, 200)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0, "a_better_seeds": 0, "seeds": 3}
    better = intersection.copy()
    better[:2] = np.minimum(better[:2] + 5, union[:2])  # A better in seeds 0 and 1, worse in seed 2
    better[2] = better[2] // 2
    diff = paired_difference(better, union, intersection, union, 200)
    per_seed = [miou_from_counts(a, u) - miou_from_counts(b, u) for a, b, u in zip(better, intersection, union)]
    assert diff["a_better_seeds"] == 2 and diff["seeds"] == 3
    assert diff["difference"] == pytest.approx(np.mean(per_seed)) and diff["low"] <= diff["difference"] <= diff["high"]
    # against a reimplementation: resample frames jointly and seed pairs, the same draws as for one method
    rng = np.random.default_rng(0)
    frames, picks = rng.integers(0, 20, size=(30, 20)), rng.integers(0, 3, size=(30, 3))
    values = [np.mean([miou_from_counts(better[s][f], union[s][f]) - miou_from_counts(intersection[s][f],
                                                                                       union[s][f]) for s in p])
              for f, p in zip(frames, picks)]
    assert (paired_difference(better, union, intersection, union, 30)["low"]
            == pytest.approx(np.percentile(values, 2.5), abs=1e-12))
    with pytest.raises(ConfigError, match="seeds"):
        paired_difference(intersection, union, intersection[:2], union[:2])


def test_stack_runs_aligns_frames_by_name_and_refuses_other_frames():
    names, intersection, union = stack_runs([record("abc", INTERSECTION, UNION),
                                             record("cab", np.roll(INTERSECTION, 1, 0), np.roll(UNION, 1, 0))])
    assert names == ["a", "b", "c"] and intersection.shape == (2, 3, 2)
    assert np.array_equal(intersection[0], intersection[1]) and np.array_equal(union[0], union[1])
    with pytest.raises(ConfigError, match="different frames"):
        stack_runs([record("abc", INTERSECTION, UNION), record("abd", INTERSECTION, UNION)])
    with pytest.raises(ConfigError, match="twice"):
        stack_runs([record("aab", INTERSECTION, UNION)])


def test_compare_names_the_files_whose_frames_differ():
    from adapt.workflows.compare import compare_runs

    def run(path, names):
        return {"path": path, "per_image": record(names, INTERSECTION, UNION)}

    a, b = [run("a/s0.json", "abc"), run("a/s1.json", "cab")], [run("b/s0.json", "abc"), run("b/s1.json", "abd")]
    with pytest.raises(ConfigError) as err:
        compare_runs(a, b, resamples=10)  # B's second seed scored d instead of c
    message = str(err.value)
    assert message.startswith("B (b/s0.json, b/s1.json) against A: runs scored different frames (3 vs 3 images; "
                              "c not in both)") and "\n" not in message
    with pytest.raises(ConfigError, match=r"^A \(a/s0.json, a/s1.json\): runs scored different frames \(4 vs 3 "
                                          r"images; a scored twice\)"):
        compare_runs([a[0], run("a/s1.json", "abca")], b, resamples=10)
    with pytest.raises(ConfigError, match=r"^A \(a/s0.json\): per-image counts name a frame twice \(a; 1 repeats"):
        compare_runs([run("a/s0.json", "aab")], b[:1], resamples=10)
    with pytest.raises(ConfigError, match=r"^B \(b/s0.json\) against A: .*\(4 vs 3 images; d not in both\)"):
        compare_runs(a[:1], [run("b/s0.json", "abcd")], resamples=10)


def write_metrics(path, names, intersection, union):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"miou": 100 * miou_from_counts(intersection, union),
                                "per_image": record(names, intersection, union)}))
    return str(path)


def test_compare_command(tmp_path, capsys):
    intersection, union = random_counts(np.random.default_rng(4), images=15, seeds=2)
    names = [f"frame{i}" for i in range(15)]
    a = [write_metrics(tmp_path / f"a{s}" / "metrics.json", names, np.minimum(intersection[s] + 3, union[s]),
                       union[s]) for s in range(2)]
    b = [write_metrics(tmp_path / f"b{s}" / "metrics.json", names[::-1], intersection[s][::-1], union[s][::-1])
         for s in range(2)]
    out = tmp_path / "compare.json"
    code, stdout, stderr = adapt_main(capsys, "compare", f"[{a[0]},{a[1]}]", f"[{b[0]},{b[1]}]", "--output", str(out),
                                      "--resamples", "300")
    assert code == 0, stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["images"] == 15 and result["difference"]["seeds"] == 2 and result["difference"]["a_better_seeds"] == 2
    a_mious = [100 * miou_from_counts(np.minimum(i + 3, u), u) for i, u in zip(intersection, union)]
    assert result["a"]["per_seed"] == pytest.approx(a_mious, abs=1e-5)
    assert result["a"]["low"] <= result["a"]["miou"] <= result["a"]["high"]
    assert result["difference"]["low"] > 0  # A adds true positives in every frame
    assert "A - B" in stdout and "A > B in 2 of 2 seeds" in stdout
    code, stdout, _ = adapt_main(capsys, "compare", a[0], a[0], "--resamples", "50")  # one run against itself
    assert code == 0 and "+0.00  [ +0.00,  +0.00]" in stdout and "A > B in 0 of 1 seeds" in stdout
    other = write_metrics(tmp_path / "c" / "metrics.json", [f"other{i}" for i in range(15)], intersection[0], union[0])
    code, _, stderr = adapt_main(capsys, "compare", a[0], other)
    assert code == 2 and "different frames" in stderr and len(stderr.strip().splitlines()) == 1
    assert f"B ({other}) against A" in stderr
    (tmp_path / "old.json").write_text(json.dumps({"miou": 50.0}))
    code, _, stderr = adapt_main(capsys, "compare", a[0], str(tmp_path / "old.json"))
    assert code == 2 and "per-image counts" in stderr


@pytest.mark.parametrize("protocol", ["full", "slide"])
def test_evaluate_writes_per_image_counts_that_sum_to_the_matrix(segmenter_ckpt, tiny_pair, tmp_path, protocol):
    from adapt.data.folder import FolderDataset
    from adapt.inference import make_protocol
    from adapt.workflows.evaluate import evaluate

    metrics = evaluate(segmenter_ckpt, tiny_pair / "target", "val", tmp_path, accelerator="cpu", verbose=False,
                       plots=False, batch_size=3,
                       protocol=make_protocol(protocol, window=(32, 32) if protocol == "slide" else None))
    written = json.loads((tmp_path / "metrics.json").read_text())["per_image"]
    assert written == metrics["per_image"]
    cm = np.array(metrics["confusion_matrix"])
    assert written["names"] == FolderDataset(tiny_pair / "target", "val").names
    assert np.array_equal(np.sum(written["intersection"], 0), cm.diagonal())
    assert np.array_equal(np.sum(written["union"], 0), cm.sum(0) + cm.sum(1) - cm.diagonal())
    assert sum(written["pixels"]) == cm.sum() and sum(written["correct"]) == cm.trace()
    assert 100 * miou_from_counts(written["intersection"], written["union"]) == pytest.approx(metrics["miou"], abs=1e-5)


def test_scored_predictions_have_per_image_counts(tiny_pair, tmp_path):
    from adapt.data.folder import FolderDataset, read_label
    from adapt.workflows.score import score_predictions

    dataset = FolderDataset(tiny_pair / "target", "val")
    rng = np.random.default_rng(0)
    for label_file, name in zip(dataset.label_files, dataset.names):  # noisy labels, some void (255) predictions
        label = read_label(label_file)
        pred = np.where(rng.random(label.shape) < 0.3, rng.choice([0, 1, 255], label.shape), label)
        Image.fromarray(pred.astype(np.uint8)).save(tmp_path / f"{name}.png")
    metrics = score_predictions(tmp_path, tiny_pair / "target", "folder", "val", "train", verbose=False)
    per_image = metrics["per_image"]
    assert per_image["names"] == dataset.names and len(per_image["union"][0]) == dataset.classes.num_classes
    assert 100 * miou_from_counts(per_image["intersection"], per_image["union"]) == pytest.approx(metrics["miou"],
                                                                                                  abs=1e-5)
    assert 100 * sum(per_image["correct"]) / sum(per_image["pixels"]) == pytest.approx(metrics["pixel_accuracy"],
                                                                                      abs=1e-5)


def test_interval_by_hand_on_two_frames():
    """Frames with IoU 1/2 and 3/4 (one class): a resample of two frames scores 1/2 (both the first), 4/6 (one of
    each) or 3/4 (both the second), each end with probability 1/4, far above 2.5 %: the interval is [1/2, 3/4]."""
    mean, low, high = miou_interval([[1], [3]], [[2], [4]], 2000, seed=0)
    assert mean == pytest.approx(4 / 6) and (low, high) == pytest.approx((0.5, 0.75))
    diff = paired_difference([[1], [3]], [[2], [4]], [[1], [1]], [[2], [4]], 2000)
    # A - B per resample: 0 (both first), 4/6 - 2/6 = 1/3 (one of each), 3/4 - 1/4 = 1/2 (both second)
    assert diff["difference"] == pytest.approx(1 / 3) and (diff["low"], diff["high"]) == pytest.approx((0, 0.5))
