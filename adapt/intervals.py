"""How sure an mIoU is: percentile bootstrap intervals over the frames of a test split (and over seeds), from the
per-image counts that ``adapt evaluate`` writes into metrics.json as ``per_image`` (``per_image_record``).

The mIoU of a set of images is computed as on one accumulated confusion matrix (``adapt.metrics.mean_iou``): per
class sum(intersection) / sum(union) over the images, macro mean over the classes whose union is > 0. A resample
draws N frames with replacement (and, with S seeds, S seeds with replacement), recomputes each seed's mIoU from the
summed counts of the drawn frames and averages over the drawn seeds. Every seed is resampled with the same frames:
frames and seeds are the two sources of variation. Values are fractions in [0, 1].

Draws, in this order, from ``numpy.random.default_rng(seed)``: ``integers(0, N, size=(resamples, N))`` (frames),
then ``integers(0, S, size=(resamples, S))`` (seeds), so a test can redo them.
"""

from __future__ import annotations

import numpy as np

from adapt.errors import ConfigError

COUNTS = ("intersection", "union", "pixels", "correct")


def per_image_record(batches: list[dict]) -> dict:
    """The ``per_image`` record of metrics.json: ``names`` [N] and ``intersection``, ``union`` [N][C], ``pixels``,
    ``correct`` [N] as plain lists of ints, from batches of ``{"names": [B], "intersection": int [B, C], ...}``
    (``adapt.metrics.image_counts``; tensors or arrays) in image order."""
    record: dict = {"names": [str(n) for b in batches for n in b["names"]]}
    for key in COUNTS:
        record[key] = [np.asarray(row).tolist() for b in batches for row in b[key]]
    return record


def _repeated(names: list[str]) -> str:
    """The first name (in sorted order) that ``names`` holds more than once."""
    seen, repeated = set(), set()
    for name in names:
        (repeated if name in seen else seen).add(name)
    return min(repeated)


def stack_runs(records: list[dict], names: list[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-image records of S runs (seeds) -> (frame names [N], intersection int64 [S, N, C], union [S, N, C]),
    every run's images put in the order of ``names`` (default: the first run's). ConfigError when a run scored
    other frames, or a frame twice."""
    if not records:
        raise ConfigError("no runs to stack; give at least one metrics.json with per-image counts")
    names = list(records[0]["names"] if names is None else names)
    if len(set(names)) != len(names):
        raise ConfigError(f"per-image counts name a frame twice ({_repeated(names)}; {len(names) - len(set(names))} "
                          "repeats); score each frame once")
    intersections, unions = [], []
    for record in records:
        if sorted(record["names"]) != sorted(names):
            extra = sorted(set(record["names"]) ^ set(names))
            what = f"{extra[0]} not in both" if extra else f"{_repeated(record['names'])} scored twice"
            raise ConfigError(f"runs scored different frames ({len(record['names'])} vs {len(names)} images; "
                              f"{what}); compare runs that scored each frame of one split once")
        position = {name: i for i, name in enumerate(record["names"])}
        order = [position[name] for name in names]
        intersections.append(np.asarray(record["intersection"], dtype=np.int64)[order])
        unions.append(np.asarray(record["union"], dtype=np.int64)[order])
    return names, np.stack(intersections), np.stack(unions)


def miou_of_sums(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """float64 [...]: the mIoU of summed counts ``intersection``, ``union`` [..., C] (NaN where no class has a
    union)."""
    defined = union > 0
    iou = np.divide(intersection, union, out=np.zeros(union.shape), where=defined)
    count = defined.sum(-1)
    return np.divide(iou.sum(-1), count, out=np.full(count.shape, np.nan), where=count > 0)


def miou_from_counts(intersection: np.ndarray, union: np.ndarray) -> float:
    """The mIoU of a set of images: per-image counts int [N, C] summed over images, then ``miou_of_sums``."""
    return float(miou_of_sums(np.asarray(intersection).sum(0), np.asarray(union).sum(0)))


def _resampled_mious(runs: list[tuple[np.ndarray, np.ndarray]], frames: np.ndarray) -> list[np.ndarray]:
    """Each run's (intersection, union [S, N, C]) mIoU per seed under each frame resample: float64 [R, S].
    ``frames``: int64 [R, N], how many times each frame was drawn."""
    return [np.stack([miou_of_sums(frames @ i, frames @ u) for i, u in zip(inter, union)], axis=1)
            for inter, union in runs]


def _bootstrap(runs: list[tuple[np.ndarray, np.ndarray]], resamples: int, seed: int) -> list[np.ndarray]:
    """float64 [R] per run: the mean over resampled seeds of the mIoU over resampled frames (the same draws for
    every run, seeds paired by position)."""
    num_seeds, num_frames = runs[0][0].shape[:2]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_frames, size=(resamples, num_frames))
    frames = np.zeros((resamples, num_frames), dtype=np.int64)
    np.add.at(frames, (np.arange(resamples)[:, None], draws), 1)
    seeds = rng.integers(0, num_seeds, size=(resamples, num_seeds))
    return [np.take_along_axis(m, seeds, axis=1).mean(1) for m in _resampled_mious(runs, frames)]


def _as_runs(intersection: np.ndarray, union: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[N, C] or [S, N, C] -> int64 [S, N, C] twice."""
    intersection, union = np.asarray(intersection, dtype=np.int64), np.asarray(union, dtype=np.int64)
    if intersection.ndim == 2:
        intersection, union = intersection[None], union[None]
    if intersection.shape != union.shape or intersection.ndim != 3:
        raise ConfigError(f"per-image counts of shapes {intersection.shape} and {union.shape}; give intersection "
                          "and union as [images, classes] or [seeds, images, classes]")
    return intersection, union


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def miou_interval(intersection: np.ndarray, union: np.ndarray, resamples: int = 2000, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """(mIoU, low, high): the mean over seeds of each seed's mIoU and its percentile bootstrap interval at
    ``level``, resampling frames and seeds (``resamples`` times). intersection, union: int [N, C] (one run) or
    [S, N, C] (S seeds on the same frames, in the same order)."""
    runs = _as_runs(intersection, union)
    point = float(np.mean([miou_from_counts(i, u) for i, u in zip(*runs)]))
    return (point, *_percentiles(_bootstrap([runs], resamples, seed)[0], level))


def paired_difference(a_intersection: np.ndarray, a_union: np.ndarray, b_intersection: np.ndarray,
                      b_union: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Method A against method B on the same frames (same order), seeds paired by position: ``difference`` = mean
    over seeds of mIoU(A) - mIoU(B), its interval ``low``, ``high`` (frames resampled jointly for A and B, seed
    pairs resampled), ``a_better_seeds``: how many seeds have mIoU(A) > mIoU(B), of ``seeds``. Counts: int [N, C]
    or [S, N, C] each."""
    a, b = _as_runs(a_intersection, a_union), _as_runs(b_intersection, b_union)
    if a[0].shape[:2] != b[0].shape[:2]:
        raise ConfigError(f"A has {a[0].shape[0]} seeds on {a[0].shape[1]} images, B {b[0].shape[0]} on "
                          f"{b[0].shape[1]}; pair the same number of seeds on the same frames")
    per_seed = [miou_from_counts(*ai) - miou_from_counts(*bi) for ai, bi in zip(zip(*a), zip(*b))]
    resampled_a, resampled_b = _bootstrap([a, b], resamples, seed)
    low, high = _percentiles(resampled_a - resampled_b, level)
    return {"difference": float(np.mean(per_seed)), "low": low, "high": high,
            "a_better_seeds": sum(d > 0 for d in per_seed), "seeds": len(per_seed)}
