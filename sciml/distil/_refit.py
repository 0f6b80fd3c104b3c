"""Least squares of a `TermModel` against the data, through the ODE solve (multiple shooting)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from .._data import BLOW_UP, TrajectorySet
from .._identify import DETERMINED
from .._mechanistic import (
    ParameterTransform,
    channel_residuals,
    initial_guesses,
    pinned_initial,
    simulate,
)
from .._model import MechanisticModel
from .._smooth import smooth
from ._terms import TermModel

_FAILED = 1e3  # residual given to points an ODE solve did not reach

# Relative error below which data are taken as exact: BIC compares fits by log(SSE), and on
# noise-free data the ODE solver's own error would otherwise make needless tiny terms look
# significant (a 1e-9 * x**3 that improves a near-zero SSE by a factor of two).
_ERROR_FLOOR = 1e-4
SHOOTING_PERIODS = 1.0  # the refit's multiple-shooting pieces, in characteristic periods
SPLIT_ABOVE = 24  # coefficients above which a model's refits are compiled for two sizes


@dataclasses.dataclass(frozen=True)
class Refit:
    params: np.ndarray
    stderr: np.ndarray
    y0: np.ndarray  # (trajectories, D) fitted initial states
    sse: float
    n: int
    k: int
    ok: bool
    iterations: int = 0  # Levenberg–Marquardt steps taken

    @property
    def bic(self) -> float:
        sse = max(self.sse, self.n * _ERROR_FLOOR**2)
        return self.n * math.log(sse / self.n) + self.k * math.log(self.n)


class Refitter:
    """Least squares of a `TermModel` against data, with terms switched off by a mask.

    Compiled once per model structure (twice above `SPLIT_ABOVE` coefficients: for half and
    for all of them, `_bucket`); masks and starting values are arguments, so pruning costs no
    recompilation, and only the coefficients a mask switches on are unknowns of the least
    squares. A solve that leaves `TrajectorySet.blow_up_bound` (a blow-up) fails at once. A
    coefficient with bounds (`TermModel.coefficient_bounds`) is fitted through
    `ParameterTransform`'s map, so it stays within them.

    Multiple shooting: each trajectory is cut into pieces `horizon` long (by default
    `SHOOTING_PERIODS` characteristic periods of the data, `2 pi * Smoothed.time_scale()`
    each), every piece from its own fitted initial state (the first piece's is fitted only with
    `fit_initial_state`). On oscillating, stiff or chaotic series one shooting over the whole
    span makes the right equations look wrong (a small phase error grows without bound) and the
    least squares stall far from the optimum; on slow, monotone series the horizon covers the
    whole span and nothing changes. Starts taken from the smoothed data instead of fitted would
    let spurious terms fit the smoothing error; pieces several periods long fail on chaos
    (Lorenz with coefficients 20% off: one period recovers them, three do not).
    `horizon=math.inf` is single shooting.

    Weights: each measured sample's residual is divided by the noise the data show at its size
    (`Smoothed.noise_weights`: fixed and value-proportional parts, estimated from the smoothing
    residuals). Where noise grows with the value, least squares that weigh every sample alike
    let the largest, noisiest values decide, and small spurious terms that follow their noise
    look significant to the BIC (a chaotic Chen-Lee system with 5% multiplicative noise kept a
    0.0003*x1**3 beside its true terms). Every weight is 1 where `noise_weights` cannot tell
    (partial observation, fewer than `MIN_NOISE_POINTS` samples).
    """

    def __init__(
        self,
        term_model: TermModel,
        data: TrajectorySet,
        *,
        fit_initial_state=True,
        horizon: float | None = None,
        rtol=1e-7,
        atol=1e-9,
        max_iterations=100,
        max_steps=2048,
        blow_up: float = BLOW_UP,
    ):
        self.term_model = term_model
        if horizon is None and data.partial and data.unmeasured().any():
            horizon = math.inf  # a piece's free start would rescale an unmeasured state
        if horizon is None:
            horizon = SHOOTING_PERIODS * 2 * math.pi * smooth(data).time_scale()
        shooting = data.segments(horizon)
        self.horizon = horizon
        self.data = data
        model = term_model.model
        ts, ys, mask = (jnp.asarray(a) for a in shooting.pieces.padded())
        starts = np.array(ys[:, 0, :])
        if shooting.cut:
            later = np.setdiff1d(np.arange(len(shooting.pieces)), shooting.first)
            starts[later] = smooth(data).y[shooting.rows[later]]
        free = np.ones(starts.shape)
        if not fit_initial_state:
            free[shooting.first] = 0.0
        free[shooting.first] *= ~pinned_initial(model, data)  # known initial values
        # An unmeasured state's fitted initial value stays within its `[initial]` bounds: it is
        # fitted as a coordinate of `ParameterTransform`'s map, like the UDE's training does.
        boxed = np.zeros(starts.shape, dtype=bool)
        if data.partial:
            declared = initial_guesses(model, data)[..., 1:3]
            boxed[shooting.first] = (
                data.unmeasured() & np.isfinite(declared).any(axis=-1) & (free[shooting.first] > 0)
            )
            lo, hi = (declared[boxed[shooting.first]][:, k] for k in (0, 1))
        else:
            lo = hi = np.zeros(0)
        box_rows, box_cols = np.nonzero(boxed)
        y0_map = ParameterTransform.make(np.clip(starts[boxed], lo, hi), lo, hi)
        box_z0 = y0_map.to_z(np.clip(starts[boxed], lo, hi))
        self._box = (box_rows, box_cols, y0_map, box_z0)
        starts, free = jnp.asarray(starts), jnp.asarray(free)
        self._free = free
        self._first = shooting.first
        self._n_free = int(free.sum())
        scale = jnp.asarray(data.state_scale())
        values, seen = (jnp.asarray(a) for a in shooting.pieces.padded_channels())
        seen = seen * mask[..., None]
        cscale = jnp.asarray(data.channel_scale())
        if not data.partial:  # each sample weighted by the noise the data show at its size
            weights = smooth(data).noise_weights(data)  # (samples, D), in the data's order
            w = np.ones(ys.shape)
            for p, (row, piece) in enumerate(zip(shooting.rows, shooting.pieces.trajectories)):
                w[p, : len(piece.t)] = weights[row : row + len(piece.t)]
            cscale = cscale / jnp.asarray(w)
        self.n = int(np.asarray(seen).sum())  # the measured values
        bound = jnp.asarray(data.blow_up_bound(blow_up))
        self._to_params, self._to_z = _parameter_maps(model)
        self._fit_y0 = fit_initial_state
        to_params = self._to_params

        # With unmeasured states, the refit keeps what the model file declares known (its
        # theory terms made of fixed parameters): freed, they trade off against the unmeasured
        # states and the fit wanders along the family of equally good models.
        unmeasured = data.partial and bool(data.unmeasured().any())
        self.unmeasured = unmeasured
        self._known = np.asarray(model.fixed, dtype=bool) & unmeasured
        declared = np.asarray(term_model.known_values or model.guesses, dtype=float)
        known = jnp.asarray(self._known)
        known_values = jnp.asarray(np.where(self._known, declared, 0.0))
        # Likewise one declared parameter's terms stay tied (-beta*S*I in dS/dt, +beta*S*I in
        # dE/dt): untied, their ratio trades off against an unmeasured state's scale.
        ties = np.asarray(term_model.ties if unmeasured else (), dtype=float).reshape(-1, 3)
        self._ties = ties
        self._tied = np.zeros(len(model.parameters), dtype=bool)
        self._tied[ties[:, 0].astype(int)] = True
        followers, leaders = (jnp.asarray(ties[:, j].astype(int)) for j in (0, 1))
        ratios = jnp.asarray(ties[:, 2])

        def unpack(theta, args):
            # theta: the free numbers only (the active coefficients, padded to a bucket, and
            # the pieces' start offsets); the others stay at `zbase` (index P: a dummy slot)
            z_free, dy0 = theta
            pmask, index, zbase = args
            z = zbase.at[index].set(z_free)[:-1]
            params = jnp.where(known, known_values, to_params(z))
            params = params.at[followers].set(ratios * params[leaders]) * pmask
            y0s = starts + free * dy0 * scale
            y0s = y0s.at[box_rows, box_cols].set(y0_map.to_p(box_z0 + dy0[box_rows, box_cols]))
            return params, y0s

        def residuals(theta, args):
            params, y0s = unpack(theta, args)
            pred, _ = simulate(
                model,
                params,
                y0s,
                ts,
                rtol=rtol,
                atol=atol,
                max_steps=max_steps,
                adjoint=diffrax.ForwardMode(),
                bound=bound,
            )
            r = channel_residuals(model, params, ts, pred, values, seen, cscale).ravel()
            return jnp.where(jnp.isfinite(r), r, _FAILED)

        solver = optx.LevenbergMarquardt(rtol=1e-6, atol=1e-8)

        @eqx.filter_jit
        def run(theta, args):
            sol = optx.least_squares(
                residuals, solver, theta, args=args, max_steps=max_iterations, throw=False
            )
            r = residuals(sol.value, args)
            jac = jax.jacfwd(lambda th: residuals(th, args))(sol.value)
            return sol.value, jnp.sum(r**2), jac, sol.stats["num_steps"]

        self._unpack = eqx.filter_jit(unpack)
        self._run = run
        self._starts = starts

    def fit(
        self,
        term_mask: Sequence[bool],
        start: np.ndarray | None = None,
        y0: np.ndarray | None = None,
    ) -> Refit:
        tm = self.term_model
        pmask = np.asarray(tm.param_mask(term_mask))
        p0 = np.asarray(tm.model.guesses) if start is None else np.asarray(start)
        z0 = np.asarray(self._to_z(jnp.asarray(p0, dtype=float)))
        # Only the parameters that can move are unknowns of the least squares (a switched-off
        # term's coefficient is 0 whatever its value, a known one is held): each unknown costs
        # one forward-mode derivative of the ODE solve per iteration.
        active = np.flatnonzero((pmask > 0) & ~self._known & ~self._tied)
        index = np.full(_bucket(len(active), len(p0)), len(p0))  # padding: the dummy slot
        index[: len(active)] = active
        zbase = np.append(z0, 0.0)
        args = (jnp.asarray(pmask), jnp.asarray(index), jnp.asarray(zbase))
        dy0 = jnp.zeros_like(self._starts)
        if y0 is not None and self._fit_y0:
            first = self._first
            shift = (jnp.asarray(y0) - self._starts[first]) / jnp.asarray(self.data.state_scale())
            dy0 = dy0.at[first].set(shift)
            rows, cols, y0_map, z0 = self._box
            if len(rows):  # bounded initial values: the shift is in the map's coordinate
                pieces = {int(p): i for i, p in enumerate(np.asarray(first))}
                given = np.asarray(y0)[[pieces[int(r)] for r in rows], cols]
                clipped = np.clip(given, y0_map.lower, y0_map.upper)
                dy0 = dy0.at[rows, cols].set(y0_map.to_z(clipped) - z0)
        theta, sse, jac, steps = self._run((jnp.asarray(zbase[index]), dy0), args)
        params, y0s = self._unpack(theta, args)
        params, sse = np.asarray(params), float(sse)
        k = len(active) + self._n_free
        # Standard errors from the Jacobian in z at the optimum, cov_z = s² (JᵀJ)⁻¹ (active
        # columns), carried to the parameters by the delta method: se_p = |dp/dz| se_z (the
        # maps are elementwise; a parameter pressed against a bound gets a standard error ~0).
        z = np.asarray(zbase).copy()
        z[index] = np.asarray(theta[0])
        z = jnp.asarray(z[:-1])
        dpdz = np.asarray(jax.jvp(self._to_params, (z,), (jnp.ones_like(z),))[1])
        # The fitted initial states' columns too: a coefficient correlated with a start (a
        # rate with an unmeasured state's scale) is only as determined as the pair is.
        jz = np.asarray(jac[0])[:, : len(active)]
        jy = np.asarray(jac[1]).reshape(len(jz), -1)[:, np.asarray(self._free).ravel() > 0]
        jz = np.concatenate([jz, jy], axis=1)
        stderr = np.zeros(len(params))
        dof = max(self.n - k, 1)
        try:
            cov = np.linalg.pinv(jz.T @ jz) * (sse / dof)
            var = np.clip(np.diag(cov)[: len(active)], 0, None)
            stderr[active] = np.abs(dpdz[active]) * np.sqrt(var)
        except np.linalg.LinAlgError:
            stderr[active] = np.nan
        for follower, leader, ratio in self._ties:
            stderr[int(follower)] = abs(ratio) * stderr[int(leader)]
        ok = math.isfinite(sse) and sse < _FAILED**2 and bool(np.all(np.isfinite(params)))
        y0 = np.asarray(y0s)[self._first]
        return Refit(params, stderr, y0, sse, self.n, k, ok, int(steps))


def undetermined_terms(tm: TermModel, fit: Refit, mask: Sequence[bool]) -> list[int]:
    """The discovered terms switched on whose coefficient the data do not determine (a standard
    error above `DETERMINED` times its size, or none that is finite), least determined first:
    the threshold above which the identifiability check no longer calls a value determined."""
    coef, stderr = tm.coefficients(fit.params), tm.coefficients(fit.stderr)
    relative = {
        i: stderr[i] / abs(coef[i]) if np.isfinite(stderr[i]) and coef[i] != 0 else math.inf
        for i, term in enumerate(tm.terms)
        if mask[i] and term.origin == "discovered"
    }
    return sorted((i for i, r in relative.items() if r > DETERMINED), key=lambda i: -relative[i])


def without_least_determined(
    refitter: Refitter,
    tm: TermModel,
    fit: Refit,
    mask: Sequence[bool],
    forced: frozenset[int] = frozenset(),
) -> tuple[int, Refit] | None:
    """The least determined discovered term (`undetermined_terms`, not one in `forced`)
    switched off and the model refit: (its index, the refit); None when every coefficient is
    determined or that refit fails."""
    worst = [i for i in undetermined_terms(tm, fit, mask) if i not in forced]
    if not worst:
        return None
    trial = list(mask)
    trial[worst[0]] = False
    f = refitter.fit(trial, start=fit.params, y0=fit.y0)
    return (worst[0], f) if f.ok else None


def _bucket(n: int, total: int) -> int:
    """Number of unknown coefficients a refit is compiled for, `n` needed of `total`: each size
    is a compilation (seconds), each unknown a forward-mode derivative of the ODE solve per
    iteration. A model of up to `SPLIT_ABOVE` coefficients is compiled once, for all of them;
    a larger one (a polynomial library shared by many candidates) for half of them too."""
    half = (total + 1) // 2
    return max(1, half if total > SPLIT_ABOVE and n <= half else total)


def _parameter_maps(model: MechanisticModel):
    """`z -> params` and its inverse for a term model's refit: each parameter scaled by its
    guess (`p = max(|guess|, 0.01) * z`), and, where it has bounds (a theory term's
    coefficient whose declared parameters have them), `ParameterTransform`'s map, which keeps
    it within them for every `z`."""
    guesses = np.asarray(model.guesses, dtype=float)
    pscale = jnp.asarray(np.maximum(np.abs(guesses), 1e-2))
    bounds = np.asarray(model.parameter_bounds, dtype=float).reshape(-1, 2)
    bounded = np.flatnonzero(np.isfinite(bounds).any(axis=1))
    if not len(bounded):
        return (lambda z: pscale * z), (lambda p: p / pscale)
    transform = ParameterTransform.make(guesses[bounded], bounds[bounded, 0], bounds[bounded, 1])

    def to_params(z):
        return (pscale * z).at[bounded].set(transform.to_p(z[bounded]))

    def to_z(p):
        return (p / pscale).at[bounded].set(transform.to_z(p[bounded]))

    return to_params, to_z
