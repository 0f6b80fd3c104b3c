"""Smoothed states and derivatives from noisy samples: the data-first view of the dynamics.

Collocation (derivative matching) needs dy/dt at the sample times without any ODE solve. Each
state of each trajectory is fitted by a cubic smoothing spline (scipy's `make_smoothing_spline`)
whose roughness penalty is chosen from the data, so that the amount of smoothing follows the
data's own noise rather than a setting. Its derivative is the estimate of dy/dt.

The penalty is scipy's generalised cross-validation (GCV) choice, checked against two-fold
cross-validation: the spline fitted to the even-numbered points predicts the odd-numbered ones
and vice versa. GCV's one-dimensional search can stop in a local optimum and, on long fast
oscillations or noise-free data, return a spline that is nearly a straight line (derivative
error ~100% on chaotic series). Where GCV's held-out error is more than twice the best of a
grid of penalties, the grid's choice is taken instead (of the penalties within 2% of the best
held-out error, the largest: the smoothest spline the data cannot tell apart from the best).
Two-fold cross-validation is no judge on short series (fewer than 64 points): half of 21
points no longer resolves the curve, and it then prefers no smoothing at all; GCV alone there.

Spline derivatives are least reliable at the ends of a series, so `Smoothed.interior` marks the
points away from them; collocation losses use those only.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref

import numpy as np
import scipy.optimize
from scipy.interpolate import make_smoothing_spline

from ._data import TrajectorySet

MIN_SPLINE_POINTS = 5
_MIN_HALF = 32  # two-fold cross-validation checks GCV only where each half has this many points
MIN_NOISE_POINTS = 2 * _MIN_HALF  # samples below which every least-squares weight is 1
WEIGHT_FLOOR = 0.1  # least-squares weights at most ~10x their mean (`Smoothed.noise_weights`)


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

    def time_scale(self) -> float:
        """The data's characteristic time: per trajectory and state, the spread of the smoothed
        state over the RMS of its derivative (1/omega for an oscillation of angular frequency
        omega, about a time constant for a relaxation); the median over all of them (inf when
        nothing moves)."""
        scales = []
        for i in np.unique(self.trajectory):
            rows = self.trajectory == i
            spread = np.std(self.y[rows], axis=0)
            speed = np.sqrt(np.mean(self.dydt[rows] ** 2, axis=0))
            moving = (spread > 0) & (speed > 0)
            scales.extend(spread[moving] / speed[moving])
        return float(np.median(scales)) if scales else math.inf

    def noise_weights(self, data: TrajectorySet) -> np.ndarray:
        """(n, D) least-squares weights of the samples from the noise the data show, one per
        sample and state, mean 1 per state.

        The noise is read from the data minus smooth, differenced: each point's residual less
        the straight line through its two neighbours' residuals (scaled to the noise's own
        variance). What the smoothing misses (its bias where the curve bends fast, at the ends)
        is smooth in time and cancels in the difference; the noise does not. Per state, those
        squared differences are regressed (non-negative least squares) on (1, smooth**2): noise
        of a fixed size and noise proportional to the value. The weight is 1 / the modelled
        standard deviation: where the noise grows with the value, small values weigh more, as
        maximum likelihood asks; where it is of one size, every weight is 1. The modelled
        variance is floored at `WEIGHT_FLOOR**2` times its mean, so no weight exceeds
        ~`1 / WEIGHT_FLOOR`. Every weight is 1 with partial observation (the smoothing there is
        of estimates) and on fewer than `MIN_NOISE_POINTS` samples, too few to tell the two
        parts apart reliably (the threshold below which the smoothing's two-fold
        cross-validation is not used either).

        Regressed on the residuals themselves, the smoothing's bias entered as noise of a fixed
        size where the data had none, and the weights came out too flat (a series from 0.14 to
        0.53 with 5% proportional noise: weights from 0.86 to 1.95 times their mean, where
        1/value gives 0.82 to 2.78; differenced, they are 1/value)."""
        n, d = self.y.shape
        if data.partial or n < MIN_NOISE_POINTS:
            return np.ones((n, d))
        raw = np.concatenate([tr.y for tr in data.trajectories])
        resid = raw - self.y
        middle, spread = [], []  # rows with two neighbours in their trajectory; the scaling
        for i in np.unique(self.trajectory):
            rows = np.flatnonzero(self.trajectory == i)
            if len(rows) < 3:
                continue
            t = self.t[rows]
            gap = t[2:] - t[:-2]
            before = np.where(gap > 0, (t[2:] - t[1:-1]) / np.where(gap > 0, gap, 1), 0.5)
            middle.append(np.stack([rows[:-2], rows[1:-1], rows[2:]], axis=1))
            spread.append(np.stack([before, 1 - before], axis=1))
        if not middle:
            return np.ones((n, d))
        (a, b, c), (wa, wc) = np.concatenate(middle).T, np.concatenate(spread).T
        norm = np.sqrt(1 + wa**2 + wc**2)
        weights = np.ones((n, d))
        for j in range(d):
            e2 = ((resid[b, j] - wa * resid[a, j] - wc * resid[c, j]) / norm) ** 2
            design = np.stack([np.ones(len(b)), self.y[b, j] ** 2], axis=1)
            coef, _ = scipy.optimize.nnls(design, e2)
            var = np.stack([np.ones(n), self.y[:, j] ** 2], axis=1) @ coef
            mean = float(np.mean(var))
            if not mean > 0:  # no residual at all (noise-free data, or a constant state)
                continue
            sd = np.sqrt(np.maximum(var, WEIGHT_FLOOR**2 * mean))
            weights[:, j] = (1.0 / sd) / np.mean(1.0 / sd)
        return weights

    def noise(self, data: TrajectorySet) -> np.ndarray:
        """Per-state standard deviation of data minus smooth: the noise level it implies."""
        raw = np.concatenate([tr.y for tr in data.trajectories])
        return np.std(raw - self.y, axis=0)


_LOG_LAMBDAS = np.arange(-14.0, 1.01, 0.5)  # roughness penalties searched (scaled units)
_REFINE = np.arange(-0.5, 0.51, 0.125)  # then finer steps around the best
_CV_TOLERANCE = 0.02


def _cv_error(u: np.ndarray, v: np.ndarray, lam: float | None) -> float:
    """Two-fold held-out error of the smoothing spline with penalty `lam` (None: GCV's choice,
    made on each half): even points predict odd ones and vice versa (interior predictions
    only)."""
    err = 0.0
    for fit, held in (
        (slice(0, None, 2), slice(1, None, 2)),
        (slice(1, None, 2), slice(0, None, 2)),
    ):
        spline = make_smoothing_spline(u[fit], v[fit], lam=lam)
        uf, uh, vh = u[fit], u[held], v[held]
        inside = (uh >= uf[0]) & (uh <= uf[-1])
        err += float(np.mean((spline(uh[inside]) - vh[inside]) ** 2))
    return err


def _penalty(u: np.ndarray, v: np.ndarray) -> float | None:
    """None (scipy's GCV choice) unless GCV's held-out error is more than twice the best of the
    grid; then the grid's choice (module docstring)."""
    if len(u) < 2 * _MIN_HALF:
        return None
    coarse = np.array([_cv_error(u, v, 10.0**g) for g in _LOG_LAMBDAS])
    if _cv_error(u, v, None) <= 2 * np.nanmin(coarse):
        return None
    best = _LOG_LAMBDAS[int(np.argmin(coarse))]
    grid = best + _REFINE
    errors = np.array([_cv_error(u, v, 10.0**g) for g in grid])
    ok = np.isfinite(errors) & (errors <= np.nanmin(errors) * (1 + _CV_TOLERANCE))
    return float(10.0 ** grid[ok].max())


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
            spline = make_smoothing_spline(u, v, lam=_penalty(u, v))
        s, ds = spline(u), spline.derivative()(u)
    except (ValueError, np.linalg.LinAlgError):
        return y.copy(), np.gradient(y, t)
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(ds))):
        return y.copy(), np.gradient(y, t)
    return mu + sd * s, sd * ds / ts


_CACHE: dict[tuple[int, float], tuple[weakref.ref, Smoothed]] = {}


def smooth(data: TrajectorySet, edge: float = 0.03) -> Smoothed:
    """Smoothing-spline estimates of every state and its derivative (no ODE solves).

    `edge` is the fraction of each trajectory's points at either end left out of `interior`
    (at least one point a side where there are enough points). Every stage smooths the same
    data: the result is kept while `data` lives (data sets are immutable).
    """
    key = (id(data), edge)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is data:
        return hit[1]
    result = _smooth(data, edge)
    _CACHE[key] = (weakref.ref(data, lambda _ref, key=key: _CACHE.pop(key, None)), result)
    return result


def _smooth(data: TrajectorySet, edge: float) -> Smoothed:
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
