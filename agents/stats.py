"""Bootstrap confidence intervals and correlations: the one implementation the training job's report
and the benchmarks share."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval."""

    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def bootstrap_ci(
    values: Sequence[float],
    weights: Sequence[float] | None = None,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """The weighted mean of ``values`` and its percentile-bootstrap confidence interval.

    Each resample draws ``len(values)`` units with replacement and recomputes
    ``sum(w * v) / sum(w)``; with per-passage accuracies as values and question counts as weights this
    is the question-level accuracy with a cluster bootstrap over passages (questions of one passage
    are not independent). Written with NumPy because SciPy, whose ``scipy.stats.bootstrap`` does the
    same, is not a dependency of the project. Deterministic for a given ``seed``.

    Raises ``ValueError`` for no values, mismatched or non-positive weights, or a confidence outside
    (0, 1).
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("bootstrap_ci needs a non-empty 1-D sequence of values")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != x.shape:
        raise ValueError(f"{x.size} values but {w.size} weights")
    if not np.all(w > 0):
        raise ValueError("weights must be positive")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    mean = float(np.sum(w * x) / np.sum(w))
    picks = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))
    means = np.sum(w[picks] * x[picks], axis=1) / np.sum(w[picks], axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(mean, float(low), float(high))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN for fewer than 3 points or a constant series."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def within_group_r(groups: Sequence[Sequence[tuple[float, float]]]) -> float:
    """Pearson r of (x, y) pairs after subtracting each group's means: the association *among
    siblings* (the samples of one context), which is what best-of-k selection acts on. NaN for fewer
    than 3 pairs or no variation within groups."""
    xs: list[float] = []
    ys: list[float] = []
    for pairs in groups:
        if not pairs:
            continue
        x, y = np.array(pairs, dtype=float).T
        xs.extend(x - x.mean())
        ys.extend(y - y.mean())
    return pearson(xs, ys)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (ties ranked in order of appearance: they are rare in gains)."""
    def rank(v: Sequence[float]) -> np.ndarray:
        return np.argsort(np.argsort(np.asarray(v), kind="stable"), kind="stable")

    return pearson(rank(x), rank(y))
