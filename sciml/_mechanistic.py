"""Stage 2: fit the declared mechanistic model to the data by least squares through the ODE solve.

Parameters are fitted through a transform (`ParameterTransform`): log-like far from zero, so
guesses off by 100x are a few units away, linear through zero, so a guess of the wrong sign or
zero is no trap, and within declared bounds (`{ value, min, max }`) by construction. The solver
is Levenberg–Marquardt (optimistix) with forward-mode sensitivities through diffrax, started
from a fit to the data's smoothed derivatives (no ODE solve), the guesses, the guesses with
their signs flipped and perturbations of them; the best start whose model can be integrated
wins. A model that blows up with every start is steered by fitting growing windows of the data.
Initial states may be fitted too, since the first measurement is as noisy as the others.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import PRNGKeyArray

from ._data import TrajectorySet
from ._errors import NumericalError
from ._io import write_json
from ._model import MechanisticModel
from ._solve import solve

_FAILED = 1e3  # residual given to points an ODE solve did not reach


_FREE, _LOWER, _UPPER, _BOX = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class ParameterTransform:
    """Maps unconstrained `z` to parameters, one map per parameter:

    - no bounds: `p = s * sinh(z)`, `s` the guess's magnitude (1 for a zero guess): like a
      log scale far from zero (a guess off by 100x is a few units of `z` away), linear through
      zero, so the fit can change a parameter's sign when the guess has the wrong one;
    - `min` only: `p = min + s * exp(z)` (`min = 0`: a positive parameter); `max` only:
      `p = max - s * exp(z)`;
    - both: `p = min + (max - min) * sigmoid(z)`.

    Every `z` gives a parameter within its bounds, so the least-squares solver needs none.
    """

    kind: np.ndarray  # (P_free,) int: _FREE, _LOWER, _UPPER, _BOX
    scale: np.ndarray  # (P_free,)
    lower: np.ndarray  # (P_free,)
    upper: np.ndarray  # (P_free,)

    @classmethod
    def make(cls, guesses, lower=None, upper=None) -> ParameterTransform:
        g = np.asarray(guesses, dtype=float)
        lo = np.full_like(g, -np.inf) if lower is None else np.asarray(lower, dtype=float)
        hi = np.full_like(g, np.inf) if upper is None else np.asarray(upper, dtype=float)
        has_lo, has_hi = np.isfinite(lo), np.isfinite(hi)
        kind = np.where(has_lo, np.where(has_hi, _BOX, _LOWER), np.where(has_hi, _UPPER, _FREE))
        gap = np.where(has_lo, g - np.where(has_lo, lo, 0.0), np.where(has_hi, hi - g, g))
        fallback = np.where(np.abs(g) > 0, np.abs(g), 1.0)
        scale = np.where(np.abs(gap) > 0, np.abs(gap), fallback)
        return cls(kind=kind, scale=scale, lower=lo, upper=hi)

    @classmethod
    def for_model(cls, model: MechanisticModel) -> ParameterTransform:
        idx = np.asarray(model.free_index, dtype=int)
        bounds = np.asarray(model.parameter_bounds, dtype=float).reshape(-1, 2)[idx]
        return cls.make(np.asarray(model.guesses, dtype=float)[idx], bounds[:, 0], bounds[:, 1])

    def _finite_bounds(self):
        lo = np.where(np.isfinite(self.lower), self.lower, 0.0)
        hi = np.where(np.isfinite(self.upper), self.upper, 1.0)
        return lo, hi

    def to_z(self, p):
        """The `z` of parameters `p` (a parameter on a bound is moved just inside it)."""
        lo, hi = self._finite_bounds()
        p = jnp.asarray(p, dtype=jnp.float64)
        width = hi - lo
        frac = jnp.clip((p - lo) / width, 1e-6, 1 - 1e-6)
        above = jnp.maximum((p - lo) / self.scale, 1e-6)
        below = jnp.maximum((hi - p) / self.scale, 1e-6)
        return jnp.select(
            [self.kind == _FREE, self.kind == _LOWER, self.kind == _UPPER],
            [jnp.arcsinh(p / self.scale), jnp.log(above), jnp.log(below)],
            jnp.log(frac) - jnp.log1p(-frac),
        )

    def to_p(self, z):
        lo, hi = self._finite_bounds()
        ez = jnp.exp(jnp.minimum(z, 700.0))
        return jnp.select(
            [self.kind == _FREE, self.kind == _LOWER, self.kind == _UPPER],
            [
                self.scale * jnp.sinh(jnp.clip(z, -700.0, 700.0)),
                lo + self.scale * ez,
                hi - self.scale * ez,
            ],
            lo + (hi - lo) * jax.nn.sigmoid(z),
        )


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

    def save(self, path: str | Path) -> None:
        """The fit as JSON (`MechanisticFit.load` reads it back with the model)."""
        write_json(
            path,
            {
                "parameters": self.parameter_dict,
                "params": np.asarray(self.params).tolist(),
                "y0": np.asarray(self.y0).tolist(),
                "cost": float(self.cost),
                "rmse": np.asarray(self.rmse).tolist(),
                "n_starts": int(self.n_starts),
                "success": bool(self.success),
                "message": str(self.message),
            },
        )

    @classmethod
    def load(cls, path: str | Path, model: MechanisticModel) -> MechanisticFit:
        d = json.loads(Path(path).read_text())
        return cls(
            model=model,
            params=np.asarray(d["params"], dtype=float),
            y0=np.asarray(d["y0"], dtype=float),
            cost=float(d["cost"]),
            rmse=np.asarray(d["rmse"], dtype=float),
            n_starts=int(d["n_starts"]),
            success=bool(d["success"]),
            message=str(d["message"]),
        )


def _full_params(model: MechanisticModel, free):
    full = jnp.asarray(model.guesses, dtype=jnp.float64)
    idx = np.asarray(model.free_index, dtype=int)
    return full.at[idx].set(free) if len(idx) else full


def simulate(
    model: MechanisticModel,
    params,
    y0s,
    ts,
    *,
    rtol=1e-7,
    atol=1e-9,
    max_steps=8192,
    adjoint=None,
    bound=None,
):
    """Solve the model for every trajectory: `y0s` (N, D), `ts` (N, M) -> ys (N, M, D), ok (N,)
    (`bound`: `solve`'s, a solve leaving `|y| <= bound` fails there)."""

    def one(y0, t):
        return solve(
            lambda tt, y: model.vector_field(tt, y, params),
            y0,
            t,
            rtol=rtol,
            atol=atol,
            max_steps=max_steps,
            adjoint=adjoint,
            bound=bound,
        )[:2]

    return jax.vmap(one)(y0s, ts)


def forcing(model: MechanisticModel, data: TrajectorySet) -> tuple | None:
    """With partial data, the measured residual states as inputs: `(index, times, rates)` or
    None.

    Where some state is not measured and the model has neural residuals, the declared
    equation of a residual state is known to be incomplete; if that state is measured (at 80%
    of the samples or more), the mechanistic stage takes its course from the data rather
    than from its incomplete equation (its rate of change is the smoothed data's, linear
    between samples), so that the unmeasured states and the parameters of the complete
    equations are fitted to what was measured, not to the error of the incomplete one.
    `times` (N, M) and `rates` (N, M, F) are per trajectory (`TrajectorySet.padded`)."""
    if not (model.residual_states and data.partial and data.unmeasured().any()):
        return None
    from ._smooth import smooth

    k = len(data.observables)
    share = np.concatenate([tr.mask(k)[:, : len(data.states)] for tr in data.trajectories])
    index = [
        j
        for j in model.residual_index
        if share[:, j].mean() >= 0.8 and not data.unmeasured()[:, j].any()
    ]
    if not index:
        return None
    smoothed = smooth(data)
    ts = data.padded()[0]
    rates = np.zeros((*ts.shape, len(index)))
    for i in range(len(data)):
        rows = smoothed.trajectory == i
        m = int(rows.sum())
        rates[i, :m] = smoothed.dydt[rows][:, index]
        rates[i, m:] = rates[i, m - 1]
    return np.asarray(index), ts, rates


def simulate_forced(
    model: MechanisticModel, params, y0s, ts, forced, *, rtol=1e-7, atol=1e-9, adjoint=None
):
    """`simulate` with the states of `forced` (`forcing`'s result, or None: plain `simulate`)
    following their data."""
    if forced is None:
        return simulate(model, params, y0s, ts, rtol=rtol, atol=atol, adjoint=adjoint)
    index, times, rates = (jnp.asarray(a) for a in forced)

    def one(y0, t, tg, rate):
        def field(tt, y):
            given = jax.vmap(lambda r: jnp.interp(tt, tg, r), in_axes=1)(rate)
            return model.vector_field(tt, y, params).at[index].set(given.astype(y.dtype))

        return solve(field, y0, t, rtol=rtol, atol=atol, max_steps=8192, adjoint=adjoint)[:2]

    return jax.vmap(one)(y0s, ts, times, rates)


def predicted_channels(model: MechanisticModel, params, ts, pred):
    """What the data hold, as the model predicts it: states `pred` (N, M, D) at times `ts`
    (N, M) -> (N, M, D + K), the states then the observation equations' values."""
    return jax.vmap(jax.vmap(model.channels, in_axes=(0, 0, None)), in_axes=(0, 0, None))(
        ts, pred, params
    )


def channel_residuals(model: MechanisticModel, params, ts, pred, values, mask, scale):
    """Scaled residuals of predicted states `pred` (N, M, D) against a data set's
    `padded_channels()` (`values`, `mask`), 0 where nothing was measured: (N, M, D + K)."""
    if not model.observations and values.shape[-1] == pred.shape[-1]:
        predicted = pred
    else:
        predicted = predicted_channels(model, params, ts, pred)
    return jnp.where(mask > 0, (predicted - values) / scale, 0.0)


def initial_guesses(model: MechanisticModel, data: TrajectorySet) -> np.ndarray:
    """(N, D, 4): guess, min, max and known (1.0) of every trajectory's initial state. A
    measured state's guess is its first value (or the interpolation of its measured values),
    unbounded; an unmeasured one's is its `[initial]` declaration, else the mean absolute
    measured value of the data (a guess of scale only)."""
    ys0 = np.stack([tr.y[0] for tr in data.trajectories])
    vals, mask = data.padded_channels()
    typical = float(np.mean(np.abs(vals[mask > 0]))) if (mask > 0).any() else 1.0
    inf = np.full_like(ys0, np.inf)
    out = np.stack([ys0, -inf, inf, np.zeros_like(ys0)], axis=-1)
    unmeasured = data.unmeasured()
    for j, state in enumerate(data.states):
        declared = model.initial_guess(state)
        guess = declared if declared is not None else (typical or 1.0, -np.inf, np.inf, False)
        out[unmeasured[:, j], j] = np.asarray(guess, dtype=float)
    return out


def pinned_initial(model: MechanisticModel, data: TrajectorySet) -> np.ndarray:
    """(N, D) bool: initial values that are known, not fitted (a state that a trajectory never
    measures, declared in `[initial]` with `fixed = true`)."""
    known = [bool((model.initial_guess(s) or (0, 0, 0, False))[3]) for s in model.states]
    return data.unmeasured() & np.asarray(known, dtype=bool)


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


_HINT = (
    "other guesses, bounds for the parameters ({ value, min, max } in the model file), a"
    " shorter time window of the data, or a model that stays finite over the data's span"
)


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
    - `model`: the declared model; `model.guesses` are the first start, its bounds are kept.
    - `data`: the trajectories.
    - `key`: randomness for the extra starts (keyword-only).
    - `fit_initial_state`: also fit each trajectory's initial state.
    - `n_starts`: number of starts (the guesses, then perturbations of them); a start fitted to
      the data's smoothed derivatives and one with the signs of unbounded guesses flipped are
      added.
    - `spread`: standard deviation of the perturbations in `z` (0.7 ≈ a factor of 2).

    Residuals are scaled per state by the mean absolute value of that state. A start whose
    model cannot be integrated over the data's span is steered: it is fitted on the first part
    of every trajectory, and the window grows as long as the fitted model stays finite.

    Partial observation (docs/partial-observation.md): only measured values enter the
    residuals (the states where measured, then the observation equations' values); the
    initial value of a state a trajectory never measures is always fitted, from its
    `[initial]` guess and within its bounds.
    """
    ts, ys, mask = (jnp.asarray(a) for a in data.padded())
    values, cmask = (jnp.asarray(a) for a in data.padded_channels())
    cscale = jnp.asarray(data.channel_scale())
    scale = jnp.asarray(data.state_scale())
    free_idx = np.asarray(model.free_index, dtype=int)
    guesses = np.asarray(model.guesses, dtype=float)[free_idx]
    transform = ParameterTransform.for_model(model)
    n_traj, n_state = ys.shape[0], ys.shape[2]
    span = ts[:, -1:] - ts[:, :1]
    init = initial_guesses(model, data)
    unmeasured = np.asarray(data.unmeasured()) & (init[..., 3] == 0)  # fitted, not known
    u_transform = ParameterTransform.make(*(init[unmeasured][:, k] for k in range(3)))
    base = jnp.asarray(np.where(unmeasured, 0.0, init[..., 0]))
    measured = jnp.asarray(~data.unmeasured(), dtype=float)
    u_rows, u_cols = (jnp.asarray(a) for a in np.nonzero(unmeasured))
    forced = forcing(model, data)

    def unpack(theta):
        z, dy0, u = theta
        params = _full_params(model, transform.to_p(z))
        y0s = base + (measured * dy0 * scale if fit_initial_state else 0.0)
        y0s = y0s.at[u_rows, u_cols].set(u_transform.to_p(u))
        return params, y0s

    def windowed(theta, window):
        """Predictions on the first `window` fraction of each trajectory (times past it are
        clipped to its end, so the solve never goes there) and the points inside."""
        params, y0s = unpack(theta)
        end = ts[:, :1] + window * span
        pred, ok = simulate_forced(
            model,
            params,
            y0s,
            jnp.minimum(ts, end),
            forced,
            rtol=rtol,
            atol=atol,
            adjoint=diffrax.ForwardMode(),
        )
        inside = (mask > 0) & (ts <= end + 1e-9 * span)
        return pred, ok, inside

    def residuals(theta, window):
        pred, _, inside = windowed(theta, window)
        params, _ = unpack(theta)
        r = channel_residuals(model, params, ts, pred, values, cmask * inside[..., None], cscale)
        return jnp.where(jnp.isfinite(r), r, _FAILED)

    solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-10)

    @eqx.filter_jit
    def run(theta, window):
        sol = optx.least_squares(
            residuals, solver, theta, args=window, max_steps=max_iterations, throw=False
        )
        r = residuals(sol.value, window)
        _, ok, _ = windowed(sol.value, window)
        converged = sol.result == optx.RESULTS.successful
        return sol.value, 0.5 * jnp.sum(r**2), converged, ok

    @eqx.filter_jit
    def integrable(theta, window):
        return windowed(theta, window)[1]

    if not len(free_idx) and not unmeasured.any():  # nothing to fit: the declared model
        params = _full_params(model, jnp.zeros(0))
        pred, ok = simulate(model, params, base, ts, rtol=rtol, atol=atol)
        ok = np.asarray(ok)
        if not ok.all():
            raise NumericalError(
                "the declared model (no free parameters) cannot be integrated over the data's"
                " span (diverges or hits the step limit)",
                stage="mechanistic",
                trajectory=data.names[int(np.argmin(ok))],
                hint="a shorter time window of the data, or a model that stays finite there",
            )
        r = channel_residuals(model, params, ts, pred, values, cmask, cscale)
        return MechanisticFit(
            model=model,
            params=np.asarray(params),
            y0=np.asarray(base),
            cost=float(0.5 * np.sum(np.asarray(r) ** 2)),
            rmse=_state_rmse(pred, data),
            n_starts=0,
            success=True,
            message="no free parameters",
        )
    z0 = transform.to_z(jnp.asarray(guesses))
    u0 = u_transform.to_z(jnp.asarray(init[unmeasured][:, 0]))
    starts = [(z0, u0)]
    unbounded = (transform.kind == _FREE) & (guesses != 0)
    if unbounded.any():  # a guess of the wrong sign
        starts.append((jnp.where(unbounded, -z0, z0), u0))
    keys = jax.random.split(key, max(n_starts - 1, 1))
    for k in keys[: n_starts - 1]:
        ku = jax.random.fold_in(k, 1)
        starts.append(
            (
                z0 + spread * jax.random.normal(k, z0.shape),
                u0 + spread * jax.random.normal(ku, u0.shape),
            )
        )
    # From the data's derivatives (often closest of all); it needs every state measured.
    collocated = None if unmeasured.any() else _collocation_start(model, data, transform, z0)
    if collocated is not None:
        starts.insert(0, (collocated, u0))
    dy0 = jnp.zeros((n_traj, n_state))
    full = jnp.asarray(1.0)
    best, failed = None, None  # (theta, cost, converged), the best non-integrable one
    for z, u in starts:
        theta, cost, converged, ok = run((z, dy0, u), full)
        cost = float(cost)
        if not math.isfinite(cost):
            continue
        if not bool(jnp.all(ok)):
            failed = failed or (theta, np.asarray(ok))
        elif best is None or cost < best[1]:
            best = (theta, cost, bool(converged))
    message = ""
    if best is None:  # steer: fit growing windows of the data from the most promising starts
        for z, u in starts[:2]:
            best = _grow_window(run, integrable, (z, dy0, u))
            if best is not None:
                message = " (steered: fitted on growing windows of the data)"
                break
    if best is None:
        ok = failed[1] if failed is not None else np.zeros(n_traj, dtype=bool)
        raise NumericalError(
            "the model cannot be integrated over the data's span with any fitted parameters"
            " (it diverges or hits the step limit), even when fitted on growing windows",
            stage="mechanistic",
            trajectory=data.names[int(np.argmin(ok))],
            hint=_HINT,
        )
    theta, cost, converged = best
    params, y0s = unpack(theta)
    pred, ok = simulate_forced(model, params, y0s, ts, forced, rtol=rtol, atol=atol)
    if forced is not None:
        names = ", ".join(model.states[j] for j in forced[0])
        message += f" (residual state(s) {names} followed their data)"
    ok = np.asarray(ok)
    if not ok.all() or not np.all(np.isfinite(np.asarray(params))):
        raise NumericalError(
            "the fitted model cannot be integrated (diverges or hits the step limit)",
            stage="mechanistic",
            trajectory=data.names[int(np.argmin(ok))],
            hint=_HINT,
        )
    rmse = _state_rmse(pred, data)
    return MechanisticFit(
        model=model,
        params=np.asarray(params),
        y0=np.asarray(y0s),
        cost=cost,
        rmse=rmse,
        n_starts=len(starts),
        success=converged,
        message=("converged" if converged else "stopped at the iteration limit") + message,
    )


def _state_rmse(pred, data: TrajectorySet) -> np.ndarray:
    """(D,) root-mean-square error of predicted states over the measured values (NaN for a
    state never measured)."""
    values, cmask = data.padded_channels()
    d = len(data.states)
    seen = cmask[..., :d]
    err = np.where(seen > 0, np.asarray(pred) - values[..., :d], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((err**2).sum(axis=(0, 1)) / seen.sum(axis=(0, 1)))


def _grow_window(run, integrable, theta, *, first: float = 0.1, min_step: float = 1 / 64):
    """Continuation in time: fit the first `first` of every trajectory, then a longer window
    from that fit, and so on to the whole span. A step to a window on which the current fit
    cannot be integrated is halved. Returns `(theta, cost, converged)` or None."""
    done, step = 0.0, first
    while done < 1.0:
        window = jnp.asarray(min(1.0, done + step))
        if not bool(jnp.all(integrable(theta, window))):
            if step <= min_step:
                return None
            step /= 2
            continue
        fitted, cost, converged, ok = run(theta, window)
        if not (math.isfinite(float(cost)) and bool(jnp.all(ok))):
            step /= 2
            if step < min_step:
                return None
            continue
        theta, done, step = fitted, float(window), min(2 * step, 0.5)
    return theta, float(cost), bool(converged)
