"""Statistics of image domains: how far apart two domains are, and in what way. The mathematics behind
``adapt data gap`` (``adapt.workflows.gap`` reads the images and runs the encoder; ``adapt.plots`` draws).

- class pixel shares of labels and two distances between them (total variation, Jensen-Shannon);
- colour statistics, accumulated image by image (``ColourStats``);
- mean amplitude spectra (``SpectrumStats``) and how their difference splits between the low-frequency square that
  FDA swaps (``adapt.nets.fourier``) and the rest (``band_difference``);
- the Fréchet distance between Gaussian fits of two feature sets, and the accuracy of a cross-validated
  logistic-regression domain classifier on them.

All statistics are float64 numpy; the classifier is fitted with torch's LBFGS. No scipy, no scikit-learn.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from adapt.errors import DataError
from adapt.nets.fourier import low_frequency_size

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights of R, G, B: brightness Y = LUMA . rgb
HISTOGRAM_BINS = 64  # brightness histogram bins over [0, 1]


def draw_indices(total: int, count: int, seed: int) -> list[int]:
    """``min(count, total)`` distinct indices of ``range(total)``, drawn by ``seed``, in increasing order."""
    if count >= total:
        return list(range(total))
    return sorted(np.random.default_rng(seed).choice(total, size=count, replace=False).tolist())


def shares(counts: np.ndarray) -> np.ndarray:
    """float64 [C]: ``counts`` (pixels per class, [C]) as shares summing to 1 (all zeros when there are none)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else counts


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance ``0.5 * sum |p - q|`` of two distributions [C]: 0 (equal) to 1 (disjoint)."""
    return float(0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (the square root of the JS divergence, base 2) of two distributions [C]:
    0 (equal) to 1 (disjoint)."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        used = a > 0  # 0 log 0 = 0; where a > 0, m > 0 too
        return float((a[used] * np.log2(a[used] / m[used])).sum())

    return float(np.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0)))


class ColourStats:
    """Pixel statistics of one domain, accumulated with ``add(image)`` (uint8 [H, W, 3] RGB), every pixel of
    every image weighing alike: per-channel RGB mean and std, brightness (luma Y = 0.299 R + 0.587 G + 0.114 B)
    mean, std and histogram, HSV saturation ((max - min) / max of R, G, B; 0 for black) mean and std. All values
    on the [0, 1] scale of the images divided by 255."""

    def __init__(self) -> None:
        self.pixels = 0
        self.rgb_sum, self.rgb_squares = np.zeros(3), np.zeros(3)
        self.sums = {"brightness": 0.0, "saturation": 0.0}
        self.squares = {"brightness": 0.0, "saturation": 0.0}
        self.histogram = np.zeros(HISTOGRAM_BINS, dtype=np.int64)

    def add(self, image: np.ndarray) -> None:
        rgb = image.reshape(-1, 3).astype(np.float32) / 255
        self.pixels += len(rgb)
        self.rgb_sum += rgb.sum(0, dtype=np.float64)
        self.rgb_squares += np.square(rgb).sum(0, dtype=np.float64)
        top, bottom = rgb.max(1), rgb.min(1)
        values = {"brightness": rgb @ LUMA.astype(np.float32),
                  "saturation": np.where(top > 0, (top - bottom) / np.maximum(top, 1e-12), 0.0)}
        for name, value in values.items():
            self.sums[name] += float(value.sum(dtype=np.float64))
            self.squares[name] += float(np.square(value).sum(dtype=np.float64))
        self.histogram += np.histogram(values["brightness"], bins=HISTOGRAM_BINS, range=(0.0, 1.0))[0]

    def summary(self) -> dict:
        """``rgb_mean`` / ``rgb_std`` [3], ``brightness_mean`` / ``_std``, ``saturation_mean`` / ``_std``,
        ``brightness_histogram`` (share of pixels per bin of [0, 1], ``HISTOGRAM_BINS`` bins), ``pixels``."""
        if not self.pixels:
            raise DataError("colour statistics of no image; give a dataset with images")
        n = self.pixels
        rgb_mean = self.rgb_sum / n
        record = {"rgb_mean": rgb_mean.tolist(),
                  "rgb_std": np.sqrt(np.maximum(self.rgb_squares / n - rgb_mean ** 2, 0)).tolist()}
        for name in ("brightness", "saturation"):
            mean = self.sums[name] / n
            record[f"{name}_mean"] = mean
            record[f"{name}_std"] = float(np.sqrt(max(self.squares[name] / n - mean ** 2, 0.0)))
        record["brightness_histogram"] = (self.histogram / n).tolist()
        record["pixels"] = n
        return record


class SpectrumStats:
    """The mean amplitude spectrum of one domain: ``add(image)`` (uint8 [H, W, 3] RGB) resizes the image to
    ``size`` (height, width), scales it to [0, 1] and adds ``|FFT2|`` of each channel; ``mean()``: float64
    [3, height, width], unshifted (frequency 0 at [.., 0, 0], as ``torch.fft.fft2`` and FDA lay it out)."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = tuple(size)
        self.total = np.zeros((3, *self.size))
        self.count = 0

    def add(self, image: np.ndarray) -> None:
        height, width = self.size
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        channels = resized.astype(np.float64).transpose(2, 0, 1) / 255
        self.total += np.abs(np.fft.fft2(channels))
        self.count += 1

    def mean(self) -> np.ndarray:
        if not self.count:
            raise DataError("amplitude spectrum of no image; give a dataset with images")
        return self.total / self.count


def low_frequency_mask(height: int, width: int, beta: float) -> np.ndarray:
    """bool [height, width], unshifted: the square of frequencies ``-b..b`` on both axes that FDA swaps
    (``b = adapt.nets.fourier.low_frequency_size``; all False when ``b`` is 0)."""
    b = low_frequency_size(height, width, beta)
    mask = np.zeros((height, width), dtype=bool)
    if b > 0:
        rows = np.unique(np.r_[np.arange(0, b + 1), np.arange(height - b, height)])
        cols = np.unique(np.r_[np.arange(0, b + 1), np.arange(width - b, width)])
        mask[np.ix_(rows, cols)] = True
    return mask


def band_difference(amplitude_a: np.ndarray, amplitude_b: np.ndarray, beta: float) -> dict:
    """How the difference of two mean amplitude spectra (float [3, H, W] each) splits between FDA's
    low-frequency square of ``beta`` and the frequencies outside it.

    Returns ``beta``, ``half_side`` (b: frequencies -b..b), ``inside_relative`` and ``outside_relative`` (sum of
    ``|a - b|`` over the region divided by the sum of ``(a + b) / 2`` there: 0 = the same amplitudes, 0.4 = they
    differ by about 40 %) and ``inside_share`` (the share of the whole ``sum |a - b|`` that lies inside the
    square: what swapping that square removes). The inside values are None when the square is empty.
    """
    mask = low_frequency_mask(*amplitude_a.shape[-2:], beta)
    difference, level = np.abs(amplitude_a - amplitude_b), (amplitude_a + amplitude_b) / 2
    inside, outside = difference[:, mask].sum(), difference[:, ~mask].sum()
    record = {"beta": beta, "half_side": low_frequency_size(*amplitude_a.shape[-2:], beta),
              "inside_relative": None, "outside_relative": float(outside / max(level[:, ~mask].sum(), 1e-12)),
              "inside_share": None}
    if mask.any():
        record["inside_relative"] = float(inside / max(level[:, mask].sum(), 1e-12))
        record["inside_share"] = float(inside / max(inside + outside, 1e-12))
    return record


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean float64 [D], covariance float64 [D, D], unbiased) of ``features`` [N, D], N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise DataError(f"a Gaussian fit needs at least 2 feature vectors, got shape {features.shape}")
    return features.mean(0), np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues
    clipped to 0), by eigendecomposition."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet (2-Wasserstein squared) distance between the Gaussians N(mean_a, cov_a) and N(mean_b, cov_b):
    ``|mean_a - mean_b|^2 + tr(cov_a) + tr(cov_b) - 2 tr((cov_a^1/2 cov_b cov_a^1/2)^1/2)`` (the FID formula).

    The last trace equals ``tr((cov_a cov_b)^1/2)``, computed from the eigenvalues of the symmetric product
    ``cov_a^1/2 cov_b cov_a^1/2`` in float64, so rank-deficient covariances (fewer samples than dimensions) are
    safe. Means [D], covariances [D, D]; returns a float >= 0.
    """
    mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    root_a = _psd_sqrt(cov_a)
    product = root_a @ cov_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    difference = mean_a - mean_b
    return float(max(difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2 * cross, 0.0))


def feature_frechet(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """``frechet_distance`` of the Gaussian fits of two feature sets [N, D] and [M, D]."""
    return frechet_distance(*gaussian_fit(features_a), *gaussian_fit(features_b))


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [D], bias [1]) of an L2-regularised logistic regression on float64 ``x`` [N, D], ``y`` [N] in {0, 1}."""
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def domain_classifier_accuracy(features_a: np.ndarray, features_b: np.ndarray, folds: int = 5, seed: int = 0,
                               l2: float = 1e-2) -> dict:
    """Cross-validated accuracy of a logistic regression telling feature set ``a`` [N, D] from ``b`` [M, D].

    Classes are balanced: ``n = min(N, M)`` vectors of each set, drawn by ``seed``. Each of ``k = min(folds, n)``
    stratified folds is predicted by a classifier fitted on the others (features standardised with the training
    folds' mean and std; L2 weight ``l2`` on the mean log-loss). 0.5 is chance; near 1, the sets are apart.

    Returns ``accuracy`` (over all 2n predictions), ``folds`` (k) and ``per_domain`` (n).
    """
    n = min(len(features_a), len(features_b))
    if n < 2:
        raise DataError(f"a domain classifier needs at least 2 images of each domain, got {n}")
    rng = np.random.default_rng(seed)
    picked = [np.asarray(f, np.float64)[rng.permutation(len(f))[:n]] for f in (features_a, features_b)]
    x, y = np.concatenate(picked), np.repeat([0.0, 1.0], n)
    k = min(folds, n)
    fold = np.concatenate([rng.permutation(n) % k, rng.permutation(n) % k])  # stratified: each class split alike
    correct = 0
    for f in range(k):
        train, test = fold != f, fold == f
        mean, std = x[train].mean(0), x[train].std(0) + 1e-8
        weight, bias = _fit_logistic(torch.from_numpy((x[train] - mean) / std), torch.from_numpy(y[train]), l2)
        logits = torch.from_numpy((x[test] - mean) / std) @ weight + bias
        correct += int(((logits > 0).double() == torch.from_numpy(y[test])).sum())
    return {"accuracy": correct / (2 * n), "folds": k, "per_domain": n}


def feature_distances(source: np.ndarray, target: np.ndarray, seed: int = 0) -> dict:
    """How far apart two feature sets (float [N, D] source, [M, D] target) are, with a yardstick.

    Fréchet distances at one number of vectors per set (its small-sample bias then weighs alike): two disjoint
    random halves A, B of the source and ``k = min(N // 2, M)`` target vectors T, all cut to ``k``; source vs target
    is the mean of FD(A, T) and FD(B, T), the reference FD(A, B). Plus ``domain_classifier_accuracy`` on all vectors.

    Returns ``dim`` (D), ``images_per_set`` (k), ``frechet_source_target``, ``frechet_source_halves``, ``ratio``
    (of the two; None when the reference is 0) and ``classifier``.
    """
    if len(source) < 4 or len(target) < 2:
        raise DataError(f"the feature distances need at least 4 source and 2 target images, got {len(source)} and "
                        f"{len(target)}; give larger datasets")
    rng = np.random.default_rng(seed)
    order, half = rng.permutation(len(source)), len(source) // 2
    k = min(half, len(target))
    a, b, t = source[order[:k]], source[order[half:half + k]], target[rng.permutation(len(target))[:k]]
    reference, between = feature_frechet(a, b), (feature_frechet(a, t) + feature_frechet(b, t)) / 2
    return {"dim": int(source.shape[1]), "images_per_set": k, "frechet_source_target": between,
            "frechet_source_halves": reference, "ratio": between / reference if reference > 0 else None,
            "classifier": domain_classifier_accuracy(source, target, seed=seed)}
