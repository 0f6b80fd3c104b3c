"""The integral view of the data: formulas judged by how well their integrals along the smoothed
states reproduce the measured values (no ODE solve, no derivative estimates).

Derivative matching compares a formula with the smoothing spline's derivative, which a noisy
series leaves biased (peaks flattened, ends unreliable): on a Gray-Scott system with 5% noise
the true coefficient of `x0*x1**2` came out 0.83-0.94 instead of 1, and the true term set was
not among the best few. The integral form compares instead

    y(t_i) - y(t_start) = ∫ (f_theory + Σ_k c_k g_k)(y_smooth(t)) dt

with the measured `y(t_i)` on the left (its noise is independent from sample to sample, so least
squares are unbiased) and the smoothed states only inside the integral, where their errors
average out. Each piece of the series (half a characteristic period, `INTEGRAL_PERIODS`) has
its own unknown start, so errors do not accumulate over a long or chaotic series; samples are
weighted by the noise the data show at their size (`noise_weights`), as in the refit. The
integrals use a cubic Hermite interpolant of the smoothed states and derivatives between
samples, with two Gauss points per interval, so 21 points suffice.

Linear in the coefficients, the fit is one least squares per formula (`score`), and the best
term sets of a polynomial library can be searched exhaustively (`best_subsets`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import sympy as sp

from .._data import TrajectorySet
from .._model import MechanisticModel
from .._smooth import Smoothed

_GAUSS = (0.5 - 0.5 / math.sqrt(3.0), 0.5 + 0.5 / math.sqrt(3.0))  # on [0, 1]
MAX_SUBSETS = 60_000  # term sets of one size searched exhaustively, at most
# The integral form's pieces, in characteristic periods: half the refit's (`SHOOTING_PERIODS`).
# Integrals of smoothed states drift less over shorter pieces; on the development systems with
# 5% noise, half-period pieces ranked the true term set first among the sets of its size more
# often than whole periods (Lorenz, Rossler, the dipole), and no less often anywhere.
INTEGRAL_PERIODS = 0.5
# Relative error below which integral-form fits are not told apart: the integrals of smoothed
# states between samples are this accurate on noise-free data (40 samples of Lotka-Volterra:
# residuals ~0.1% of the states' size, which a needless y**2 term could otherwise "explain").
ERROR_FLOOR = 1e-3


@dataclasses.dataclass(frozen=True)
class IntegralScore:
    """A formula's integral-form least squares: BIC over the measured samples, its residual
    sum of squares (weighted), the number of its constants and their least-squares values."""

    bic: float
    rss: float
    k: int
    coefficients: tuple[float, ...] = ()


def _forms(expr: sp.Expr) -> list[sp.Expr]:
    """The additive terms of `expr` without their numeric coefficients (inner constants kept),
    as `build_term_model` splits them."""
    return [t.as_coeff_Mul()[1] for t in sp.Add.make_args(sp.expand(expr)) if t != 0]


@dataclasses.dataclass(frozen=True)
class IntegralView:
    """The data prepared for integral-form least squares (`IntegralView.build`).

    Arrays over the quadrature points (two per interval between consecutive samples of a
    piece): `tq`, `yq` (states). Over the samples, in the data's order: `start`/`stop` index
    the cumulative sums of interval integrals that make each sample's integral from its piece's
    start; `piece` numbers the pieces; `target` is the measured value minus the declared
    model's integral (NaN where unmeasured) and `weight` the sample's least-squares weight.
    """

    model: MechanisticModel
    tq: np.ndarray  # (m,)
    yq: np.ndarray  # (m, D)
    h: np.ndarray  # (m // 2,) interval lengths
    start: np.ndarray  # (n,)
    stop: np.ndarray  # (n,)
    piece: np.ndarray  # (n,)
    target: np.ndarray  # (n, D)
    weight: np.ndarray  # (n, D)
    size: np.ndarray  # (D,) root mean square of the weighted measured values

    @classmethod
    def build(
        cls,
        model: MechanisticModel,
        mech_params: Sequence[float],
        data: TrajectorySet,
        smoothed: Smoothed,
        horizon: float,
    ) -> IntegralView:
        shooting = data.segments(horizon)
        tq, yq, h, start, stop, piece = [], [], [], [], [], []
        done = 0  # intervals so far
        for p, (row, tr) in enumerate(zip(shooting.rows, shooting.pieces.trajectories)):
            rows = row + np.arange(len(tr.t))
            t, y, dy = smoothed.t[rows], smoothed.y[rows], smoothed.dydt[rows]
            dt = np.diff(t)[:, None]
            points = []
            for g in _GAUSS:  # cubic Hermite interpolation of the smoothed states
                h00, h10 = 2 * g**3 - 3 * g**2 + 1, g**3 - 2 * g**2 + g
                h01, h11 = -2 * g**3 + 3 * g**2, g**3 - g**2
                points.append(h00 * y[:-1] + h10 * dt * dy[:-1] + h01 * y[1:] + h11 * dt * dy[1:])
            # both Gauss points of interval i at rows 2i and 2i + 1
            yq.append(np.stack(points, axis=1).reshape(-1, y.shape[1]))
            tq.append((t[:-1, None] + np.asarray(_GAUSS) * dt).ravel())
            h.append(dt[:, 0])
            start.append(np.full(len(rows), done))
            stop.append(done + np.arange(len(rows)))
            piece.append(np.full(len(rows), p))
            done += len(dt)
        tq_all, yq_all = np.concatenate(tq), np.concatenate(yq)
        view = cls(
            model=model,
            tq=tq_all,
            yq=yq_all,
            h=np.concatenate(h),
            start=np.concatenate(start),
            stop=np.concatenate(stop),
            piece=np.concatenate(piece),
            target=np.zeros(0),
            weight=np.zeros(0),
            size=np.zeros(0),
        )
        params = jnp.asarray(mech_params, dtype=float)
        mech = np.asarray(
            jax.vmap(lambda t, y: model.vector_field(t, y, params))(
                jnp.asarray(tq_all), jnp.asarray(yq_all)
            )
        )
        if data.partial:  # the smoothing is of the states' estimates; no noise model
            values, weight = smoothed.y, np.ones(smoothed.y.shape)
        else:
            values = np.concatenate([tr.y for tr in data.trajectories])
            weight = smoothed.noise_weights(data)
        target = values - view.integrate(mech)
        seen = np.isfinite(values)
        size = np.sqrt(np.sum(np.where(seen, weight * values, 0.0) ** 2, axis=0) / seen.sum(0))
        return dataclasses.replace(view, target=target, weight=weight, size=size)

    def bic(self, state: int, rss, k: int):
        """BIC of a fit of state number `state` with residual sum of squares `rss` (a number or
        an array) and `k` constants; `rss` floored at `ERROR_FLOOR` of the state's size per
        sample."""
        n = max(int(np.isfinite(self.target[:, state]).sum()), 1)
        floor = n * (ERROR_FLOOR * self.size[state]) ** 2
        return n * np.log(np.maximum(np.maximum(rss, floor), 1e-300) / n) + k * math.log(max(n, 2))

    def integrate(self, fq: np.ndarray) -> np.ndarray:
        """(n, k) integrals, from each sample's piece start to the sample, of values `fq`
        (m, k) given at the quadrature points."""
        fq = np.asarray(fq, dtype=float).reshape(len(self.tq), -1)
        per_interval = 0.5 * self.h[:, None] * (fq[0::2] + fq[1::2])
        cum = np.concatenate([np.zeros((1, fq.shape[1])), np.cumsum(per_interval, axis=0)])
        return cum[self.stop] - cum[self.start]

    def features(self, forms: Sequence[sp.Expr]) -> np.ndarray | None:
        """(n, k) integrals of each form along the smoothed states; None where a form cannot be
        evaluated there (non-finite values)."""
        from .._expr import evaluate

        model = self.model
        values = {s: jnp.asarray(self.yq[:, i]) for i, s in enumerate(model.state_symbols)}
        values[model.time_symbol] = jnp.asarray(self.tq)
        m = len(self.tq)
        try:
            fq = np.stack(
                [np.broadcast_to(np.asarray(evaluate(f, values), float), (m,)) for f in forms],
                axis=1,
            )
        except (NotImplementedError, TypeError, ValueError):
            return None
        if not np.all(np.isfinite(fq)):
            return None
        return self.integrate(fq)

    def _project(self, state: int, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted target and columns of one state with each piece's unknown start projected
        out (measured samples only): least squares on them give the coefficients and the
        residual of the fit with one free start per piece."""
        seen = np.isfinite(self.target[:, state])
        w = self.weight[seen, state]
        y, a, piece = self.target[seen, state], columns[seen], self.piece[seen]
        w2 = w**2
        norm = np.bincount(piece, weights=w2, minlength=piece.max(initial=0) + 1)
        norm = np.where(norm > 0, norm, 1.0)

        def centred(v):
            v2 = v.reshape(len(v), -1)
            means = (
                np.stack(
                    [
                        np.bincount(piece, weights=w2 * v2[:, k], minlength=len(norm))
                        for k in range(v2.shape[1])
                    ],
                    axis=1,
                )
                / norm[:, None]
            )
            return (v2 - means[piece]) * w[:, None]

        return centred(y)[:, 0], centred(a)

    def score(self, expr: sp.Expr, state: int) -> IntegralScore | None:
        """Least squares of the coefficients of `expr`'s terms (inner constants held) for state
        number `state`; None when its terms cannot be evaluated along the smoothed states."""
        forms = _forms(expr)
        columns = self.features(forms) if forms else np.zeros((len(self.start), 0))
        if columns is None:
            return None
        y, a = self._project(state, columns)
        if a.shape[1]:
            coef = np.linalg.lstsq(a, y, rcond=None)[0]
            resid = y - a @ coef
        else:
            coef, resid = np.zeros(0), y
        rss = float(np.sum(resid**2))
        k = len(forms) + sum(len(f.atoms(sp.Float)) for f in forms)
        return IntegralScore(float(self.bic(state, rss, k)), rss, k, tuple(map(float, coef)))

    def best_subsets(
        self,
        state: int,
        library: Sequence[sp.Expr],
        *,
        max_terms: int = 6,
        per_size: int = 2,
    ) -> list[tuple[tuple[int, ...], IntegralScore]]:
        """The best term sets of `library` for state number `state` by integral-form BIC:
        the `per_size` best of each size, every set searched up to the largest size with at
        most `MAX_SUBSETS` sets, then the best set grown one term at a time (the term that
        lowers the residual most) up to `max_terms`. Each as (library indices, its score with the
        least-squares coefficients), best first within a size."""
        columns = self.features(library)
        if columns is None:
            return []
        y, a = self._project(state, columns)
        scale = np.sqrt(np.sum(a**2, axis=0))
        usable = np.flatnonzero(scale > 1e-12 * max(scale.max(initial=0.0), 1e-300))
        a = a[:, usable] / scale[usable]
        gram, cross, total = a.T @ a, a.T @ y, float(y @ y)
        out: list[tuple[tuple[int, ...], IntegralScore]] = []

        def found(subset, coef, rss, b) -> tuple[tuple[int, ...], IntegralScore]:
            terms = usable[subset]
            values = tuple(float(c) for c in coef / scale[terms])
            return tuple(int(t) for t in terms), IntegralScore(
                float(b), float(rss), len(terms), values
            )

        def solve(sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            g = gram[sets[:, :, None], sets[:, None, :]]
            c = cross[sets]
            k = sets.shape[1]
            g = g + 1e-10 * np.eye(k)  # unit columns: a tiny ridge only for exact collinearity
            coef = np.linalg.solve(g, c[..., None])[..., 0]
            return coef, total - np.einsum("sk,sk->s", c, coef)

        best_set: tuple[int, ...] = ()
        top = min(max_terms, len(usable))
        exhaustive = max(k for k in range(top + 1) if math.comb(len(usable), k) <= MAX_SUBSETS)
        for size in range(1, exhaustive + 1):
            sets = np.array(list(itertools.combinations(range(len(usable)), size)))
            coef, rss = solve(sets)
            b = self.bic(state, rss, size)
            for i in np.argsort(b)[:per_size]:
                out.append(found(sets[i], coef[i], rss[i], b[i]))
            best_set = tuple(int(j) for j in sets[int(np.argmin(b))])
        current = list(best_set)
        for size in range(exhaustive + 1, top + 1):
            rest = [j for j in range(len(usable)) if j not in current]
            if not rest:
                break
            sets = np.array([[*current, j] for j in rest])
            coef, rss = solve(sets)
            i = int(np.argmin(rss))
            current = [int(j) for j in sets[i]]
            out.append(found(sets[i], coef[i], rss[i], self.bic(state, rss[i], size)))
        return out


def polynomial_library(model: MechanisticModel, degree: int) -> list[sp.Expr]:
    """Every monomial of the model's states up to `degree`, the constant first."""
    symbols = model.state_symbols
    out: list[sp.Expr] = [sp.Integer(1)]
    for d in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(symbols, d):
            out.append(sp.Mul(*combo))
    return out


def integral_candidates(
    view: IntegralView,
    states: Sequence[str],
    *,
    degree: int = 3,
    max_terms: int = 6,
    per_size: int = 1,
) -> pd.DataFrame:
    """Candidates for each of `states` from the data alone: the best term sets of a polynomial
    library of `degree` by integral-form BIC (`IntegralView.best_subsets`), each with its
    least-squares coefficients, as rows of the engines' table (engine `sindy`, samples
    `integral`; `loss` is the weighted integral-form residual per sample).

    SINDy's thresholding and greedy paths run on derivative estimates; on noisy data they can
    miss the true term set altogether (Gray-Scott's `x0*x1**2 - 0.02*x1`), which then no refit
    can recover. The exhaustive search over small term sets does not depend on a threshold."""
    from ..symbolic._table import expression_complexity, format_equation, round_constants

    library = polynomial_library(view.model, degree)
    rows = []
    for state in states:
        j = view.model.states.index(state)
        n = max(int(np.isfinite(view.target[:, j]).sum()), 1)
        for subset, score in view.best_subsets(j, library, max_terms=max_terms, per_size=per_size):
            terms = (sp.Float(c) * library[i] for i, c in zip(subset, score.coefficients))
            expr = round_constants(sp.Add(*terms), 4)
            if expr == 0:
                continue
            rows.append(
                {
                    "state": state,
                    "engine": "sindy",
                    "samples": "integral",
                    "complexity": expression_complexity(expr),
                    "loss": score.rss / n,
                    "score": 0.0,
                    "equation": format_equation(expr),
                    "sympy_format": expr,
                }
            )
    return pd.DataFrame(rows)
