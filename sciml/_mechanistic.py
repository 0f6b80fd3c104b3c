"""Stage 2: fit the declared mechanistic model to the data by least squares through the ODE solve.

Positive and negative parameters are fitted in log space (sign kept), so guesses that are off by
a factor of several still lead to the optimum; the solver is Levenberg–Marquardt (optimistix)
with forward-mode sensitivities through diffrax, started from the guesses and from several
perturbations of them (multi-start); the best start wins. Initial states may be fitted too,
since the first measurement is as noisy as the others.
"""

from __future__ import annotations

import dataclasses
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import PRNGKeyArray

from ._data import TrajectorySet
from ._errors import NumericalError
from ._model import MechanisticModel
from ._solve import solve

_FAILED = 1e3  # residual given to points an ODE solve did not reach


@dataclasses.dataclass(frozen=True)
class ParameterTransform:
    """Maps unconstrained `z` to parameters: `sign * exp(z)` where the guess is non-zero."""

    log: np.ndarray  # (P_free,) bool
    sign: np.ndarray  # (P_free,)

    @classmethod
    def from_guesses(cls, guesses: np.ndarray) -> ParameterTransform:
        guesses = np.asarray(guesses, dtype=float)
        return cls(log=guesses != 0.0, sign=np.where(guesses < 0, -1.0, 1.0))

    def to_z(self, p):
        return jnp.where(self.log, jnp.log(jnp.abs(jnp.where(self.log, p, 1.0))), p)

    def to_p(self, z):
        return jnp.where(self.log, self.sign * jnp.exp(jnp.where(self.log, z, 0.0)), z)


@dataclasses.dataclass(frozen=True)
class MechanisticFit:
    """Result of `fit_mechanistic` (all arrays NumPy)."""

    model: MechanisticModel
    params: np.ndarray  # (P,) all parameters, fixed ones included
    y0: np.ndarray  # (N, D) initial states used (fitted or observed)
    cost: float  # 0.5 * sum of squared scaled residuals
    rmse: np.ndarray  # (D,) root-mean-square error per state, data units
    n_starts: int
    success: bool
    message: str

    @property
    def parameter_dict(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.model.parameters, self.params, strict=True)}


def _full_params(model: MechanisticModel, free):
    full = jnp.asarray(model.guesses, dtype=jnp.float64)
    idx = np.asarray(model.free_index, dtype=int)
    return full.at[idx].set(free) if len(idx) else full


def simulate(
    model: MechanisticModel, params, y0s, ts, *, rtol=1e-7, atol=1e-9, max_steps=8192, adjoint=None
):
    """Solve the model for every trajectory: `y0s` (N, D), `ts` (N, M) -> ys (N, M, D), ok (N,)."""

    def one(y0, t):
        return solve(
            lambda tt, y: model.vector_field(tt, y, params),
            y0,
            t,
            rtol=rtol,
            atol=atol,
            max_steps=max_steps,
            adjoint=adjoint,
        )[:2]

    return jax.vmap(one)(y0s, ts)


def _collocation_start(model: MechanisticModel, data: TrajectorySet, transform, z0):
    """Free parameters fitted to the smoothing-spline derivatives of the data, with no ODE solve
    (derivative matching), from the guesses `z0`: a start that does not depend on how good the
    guesses are, nor on whether the model can be integrated with them. None if it fails."""
    from ._smooth import smooth

    smoothed = smooth(data)
    x, dydt = (jnp.asarray(a) for a in smoothed.inner())
    keep = smoothed.interior if smoothed.interior.sum() >= 2 else slice(None)
    t = jnp.asarray(smoothed.t[keep])
    dscale = jnp.asarray(np.where(np.std(smoothed.dydt, 0) > 1e-12, np.std(smoothed.dydt, 0), 1.0))

    def residuals(z, _):
        params = _full_params(model, transform.to_p(z))
        field = jax.vmap(lambda tt, y: model.vector_field(tt, y, params))(t, x)
        r = ((field - dydt) / dscale).ravel()
        return jnp.where(jnp.isfinite(r), r, _FAILED)

    solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-10)
    sol = eqx.filter_jit(
        lambda z: optx.least_squares(residuals, solver, z, max_steps=200, throw=False).value
    )(z0)
    return sol if bool(jnp.all(jnp.isfinite(sol))) else None


def fit_mechanistic(
    model: MechanisticModel,
    data: TrajectorySet,
    *,
    key: PRNGKeyArray,
    fit_initial_state: bool = True,
    n_starts: int = 8,
    spread: float = 0.7,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    max_iterations: int = 200,
) -> MechanisticFit:
    """Least-squares fit of the free parameters (and initial states) of `model` to `data`.

    **Arguments:**
    - `model`: the declared model; `model.guesses` are the first start.
    - `data`: the trajectories.
    - `key`: randomness for the extra starts (keyword-only).
    - `fit_initial_state`: also fit each trajectory's initial state.
    - `n_starts`: number of starts (the guesses, then log-normal perturbations of them).
    - `spread`: standard deviation of the perturbations in log space (0.7 ≈ a factor of 2).

    Residuals are scaled per state by the mean absolute value of that state.
    """
    ts, ys, mask = (jnp.asarray(a) for a in data.padded())
    scale = jnp.asarray(data.state_scale())
    free_idx = np.asarray(model.free_index, dtype=int)
    guesses = np.asarray(model.guesses, dtype=float)[free_idx]
    transform = ParameterTransform.from_guesses(guesses)
    n_traj, n_state = ys.shape[0], ys.shape[2]

    def unpack(theta):
        z, dy0 = theta
        params = _full_params(model, transform.to_p(z))
        y0s = ys[:, 0, :] + (dy0 * scale if fit_initial_state else 0.0)
        return params, y0s

    def residuals(theta, _):
        params, y0s = unpack(theta)
        pred, ok = simulate(
            model, params, y0s, ts, rtol=rtol, atol=atol, adjoint=diffrax.ForwardMode()
        )
        r = mask[..., None] * (pred - ys) / scale
        return jnp.where(jnp.isfinite(r), r, _FAILED)

    solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-10)

    @eqx.filter_jit
    def run(theta):
        sol = optx.least_squares(residuals, solver, theta, max_steps=max_iterations, throw=False)
        r = residuals(sol.value, None)
        return sol.value, 0.5 * jnp.sum(r**2), sol.result == optx.RESULTS.successful

    if not len(free_idx):  # nothing to fit: the declared model from the observed first states
        params = _full_params(model, jnp.zeros(0))
        pred, ok = simulate(model, params, ys[:, 0, :], ts, rtol=rtol, atol=atol)
        ok = np.asarray(ok)
        if not ok.all():
            raise NumericalError(
                "the declared model cannot be integrated (diverges or hits the step limit)",
                stage="mechanistic",
                trajectory=data.names[int(np.argmin(ok))],
            )
        err = np.asarray(mask[..., None] * (pred - ys))
        return MechanisticFit(
            model=model,
            params=np.asarray(params),
            y0=np.asarray(ys[:, 0, :]),
            cost=float(0.5 * np.sum((err / np.asarray(scale)) ** 2)),
            rmse=np.sqrt((err**2).sum(axis=(0, 1)) / np.asarray(mask).sum()),
            n_starts=0,
            success=True,
            message="no free parameters",
        )
    z0 = transform.to_z(jnp.asarray(guesses))
    starts = [z0]
    n_starts = n_starts if len(free_idx) else 1  # nothing to perturb
    keys = jax.random.split(key, max(n_starts - 1, 1))
    for k in keys[: n_starts - 1]:
        noise = spread * jax.random.normal(k, z0.shape)
        starts.append(jnp.where(transform.log, z0 + noise, z0 * (1 + noise) + 0.1 * noise))
    collocated = _collocation_start(model, data, transform, z0)
    if collocated is not None:  # from the data's derivatives: often closest of all
        starts.insert(0, collocated)
    dy0 = jnp.zeros((n_traj, n_state))
    best = None
    for z in starts:
        theta, cost, converged = run((z, dy0))
        cost = float(cost)
        if math.isfinite(cost) and (best is None or cost < best[1]):
            best = (theta, cost, bool(converged))
    if best is None:
        raise NumericalError("every start of the least-squares fit failed", stage="mechanistic")
    theta, cost, converged = best
    params, y0s = unpack(theta)
    pred, ok = simulate(model, params, y0s, ts, rtol=rtol, atol=atol)
    ok = np.asarray(ok)
    if not ok.all() or not np.all(np.isfinite(np.asarray(params))):
        bad = data.names[int(np.argmin(ok))]
        raise NumericalError(
            "the fitted model cannot be integrated (diverges or hits the step limit)",
            stage="mechanistic",
            trajectory=bad,
        )
    err = np.asarray(mask[..., None] * (pred - ys))
    rmse = np.sqrt((err**2).sum(axis=(0, 1)) / np.asarray(mask).sum())
    return MechanisticFit(
        model=model,
        params=np.asarray(params),
        y0=np.asarray(y0s),
        cost=cost,
        rmse=rmse,
        n_starts=len(starts),
        success=converged,
        message="converged" if converged else "stopped at the iteration limit",
    )
