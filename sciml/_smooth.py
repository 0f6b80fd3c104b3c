"""Smoothed states and derivatives from noisy samples: the data-first view of the dynamics.

Collocation (derivative matching) needs dy/dt at the sample times without any ODE solve. Each
state of each trajectory is fitted by a cubic smoothing spline whose roughness penalty is chosen
by generalised cross-validation (scipy's `make_smoothing_spline`), so the amount of smoothing
follows the data's own noise rather than a setting. Its derivative is the estimate of dy/dt.

Spline derivatives are least reliable at the ends of a series, so `Smoothed.interior` marks the
points away from them; collocation losses use those only.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy.interpolate import make_smoothing_spline

from ._data import TrajectorySet

MIN_SPLINE_POINTS = 5


@dataclasses.dataclass(frozen=True)
class Smoothed:
    """Smoothed states and their time derivatives at every sample of every trajectory.

    All arrays are concatenated over trajectories, in the data's order.
    """

    states: tuple[str, ...]
    t: np.ndarray  # (n,)
    y: np.ndarray  # (n, D) smoothed states
    dydt: np.ndarray  # (n, D) their time derivatives
    trajectory: np.ndarray  # (n,) trajectory index
    interior: np.ndarray  # (n,) bool: away from the ends of its trajectory

    def inner(self) -> tuple[np.ndarray, np.ndarray]:
        """(states, derivatives) at the interior points (every point if too few)."""
        keep = self.interior if self.interior.sum() >= 2 else np.ones_like(self.interior)
        return self.y[keep], self.dydt[keep]

    def noise(self, data: TrajectorySet) -> np.ndarray:
        """Per-state standard deviation of data minus smooth: the noise level it implies."""
        raw = np.concatenate([tr.y for tr in data.trajectories])
        return np.std(raw - self.y, axis=0)


def _smooth_series(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One state of one trajectory: (smoothed values, derivative) at `t`."""
    if len(t) < MIN_SPLINE_POINTS or np.ptp(y) == 0:
        return y.copy(), (np.gradient(y, t) if len(t) > 1 else np.zeros_like(y))
    # Scale to O(1) so that the penalty search is well conditioned whatever the units.
    t0, ts = t[0], (t[-1] - t[0]) or 1.0
    mu, sd = float(np.mean(y)), float(np.std(y)) or 1.0
    u, v = (t - t0) / ts, (y - mu) / sd
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spline = make_smoothing_spline(u, v)
        s, ds = spline(u), spline.derivative()(u)
    except (ValueError, np.linalg.LinAlgError):
        return y.copy(), np.gradient(y, t)
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(ds))):
        return y.copy(), np.gradient(y, t)
    return mu + sd * s, sd * ds / ts


def smooth(data: TrajectorySet, edge: float = 0.03) -> Smoothed:
    """Smoothing-spline estimates of every state and its derivative (no ODE solves).

    `edge` is the fraction of each trajectory's points at either end left out of `interior`
    (at least one point a side where there are enough points).
    """
    ts, ys, ds, traj, inner = [], [], [], [], []
    for i, tr in enumerate(data.trajectories):
        pairs = [_smooth_series(tr.t, tr.y[:, j]) for j in range(tr.y.shape[1])]
        ts.append(tr.t)
        ys.append(np.stack([p[0] for p in pairs], axis=1))
        ds.append(np.stack([p[1] for p in pairs], axis=1))
        traj.append(np.full(len(tr.t), i))
        n = len(tr.t)
        k = max(1, int(round(edge * n))) if n >= 8 else 0
        mask = np.ones(n, dtype=bool)
        if k:
            mask[:k] = mask[-k:] = False
        inner.append(mask)
    return Smoothed(
        states=tuple(data.states),
        t=np.concatenate(ts),
        y=np.concatenate(ys),
        dydt=np.concatenate(ds),
        trajectory=np.concatenate(traj),
        interior=np.concatenate(inner),
    )
