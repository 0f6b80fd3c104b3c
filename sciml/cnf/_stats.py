"""Two-sample statistics for checking samples against data."""

from __future__ import annotations

import numpy as np


def _mean_pairwise_distance(a: np.ndarray, b: np.ndarray, *, same: bool) -> float:
    d = np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0.0))
    if same:
        n = len(a)
        return float(d.sum() / (n * (n - 1)))  # the zero diagonal excluded: unbiased
    return float(d.mean())


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared energy distance `2 E|X-Y| - E|X-X'| - E|Y-Y'|` between two samples.

    Zero in expectation iff the distributions are equal; can be slightly negative by chance.
    Memory is O(len(x) * len(y)): meant for a few thousand rows.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim == 1:
        x, y = x[:, None], y[:, None]
    return (
        2 * _mean_pairwise_distance(x, y, same=False)
        - _mean_pairwise_distance(x, x, same=True)
        - _mean_pairwise_distance(y, y, same=True)
    )
