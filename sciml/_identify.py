"""Which parameters and unmeasured initial values the data determine (Fisher information).

With states that are not measured, a model can fit the data equally well along whole families
of parameters: an unmeasured consumer `y` of a food chain and every coefficient in front of it
can be rescaled together (`y -> k y`, `b -> b / k`, `f -> f / k`), and an epidemic's reporting
rate trades off against its reproduction number when only reported cases are known. A fit then
returns one member of the family, with numbers that mean nothing.

`identifiability` linearises the fit at its optimum: `J` is the Jacobian of the scaled
residuals (the measured values only, as every fit here sees them) with respect to the free
parameters and the fitted initial values of unmeasured states, in relative units (each column
times the size of its value), and `F = JᵀJ / s²` (s² the residual variance) is the Fisher
information. Its inverse, taken through the eigen-decomposition so that a direction the data
do not constrain gives a huge variance rather than being dropped, gives each quantity's
relative standard error: up to `DETERMINED` it is "determined", up to `POORLY` "poorly
determined", beyond that "not determined". The weakest direction (the eigenvector of the
smallest eigenvalue) names the quantities that trade off against each other.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from ._data import TrajectorySet
from ._mechanistic import (
    MechanisticFit,
    channel_residuals,
    forcing,
    pinned_initial,
    simulate_forced,
)
from ._model import MechanisticModel

DETERMINED = 0.25  # relative standard error up to which a quantity counts as determined
POORLY = 1.0  # beyond this: not determined at all
_FLOOR = 1e-12  # relative units: the size of a value below which it counts as this size

METHOD = (
    "Fisher information of the fit (Jacobian of the measured residuals with respect to the"
    f" free parameters and unmeasured initial values): relative standard error <= {DETERMINED}"
    f" determined, <= {POORLY} poorly determined, above that not determined"
)


def _status(relative: float) -> str:
    if relative <= DETERMINED:
        return "determined"
    return "poorly determined" if relative <= POORLY else "not determined"


def identifiability(
    model: MechanisticModel,
    params,
    y0,
    data: TrajectorySet,
    *,
    labels: dict[int, str] | None = None,
    forced: tuple | None = None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
) -> dict[str, Any]:
    """Relative standard errors of `model`'s free parameters (at `params`) and of the
    initial values (in `y0`, (N, D)) of the states that `data` never measure in a trajectory
    (those not known from `[initial]`), from the Fisher information of the fit (module
    docstring). `labels` renames parameters by index in the output; `forced`: states that
    follow their data, as in the mechanistic fit (`sciml._mechanistic.forcing`)."""
    params = np.asarray(params, dtype=float)
    y0 = np.asarray(y0, dtype=float)
    free = np.asarray(model.free_index, dtype=int)
    unknown = data.unmeasured() & ~pinned_initial(model, data)
    rows, cols = np.nonzero(unknown)
    theta0 = np.concatenate([params[free], y0[rows, cols]])
    ts = jnp.asarray(data.padded()[0])
    values, measured = (jnp.asarray(a) for a in data.padded_channels())
    scale = jnp.asarray(data.channel_scale())
    size = np.maximum(np.abs(theta0), _FLOOR)

    def residuals(theta):
        p = jnp.asarray(params).at[free].set(theta[: len(free)])
        starts = jnp.asarray(y0).at[rows, cols].set(theta[len(free) :])
        pred, _ = simulate_forced(
            model, p, starts, ts, forced, rtol=rtol, atol=atol, adjoint=diffrax.ForwardMode()
        )
        return channel_residuals(model, p, ts, pred, values, measured, scale).ravel()

    theta = jnp.asarray(theta0)
    r = np.asarray(residuals(theta))
    jac = np.asarray(jax.jacfwd(residuals)(theta)) if len(theta0) else np.zeros((len(r), 0))
    jac = jac * size[None, :]  # relative units: d residual / d log(value)
    n, k = int(np.asarray(measured).sum()), len(theta0)
    ok = bool(np.all(np.isfinite(r)) and np.all(np.isfinite(jac)))
    out: dict[str, Any] = {"method": METHOD, "n_measured": n, "parameters": {}, "initial": {}}
    if not ok or not k:
        out["note"] = "nothing fitted" if not k else "the model could not be linearised here"
        return out
    s2 = float(r @ r) / max(n - k, 1)
    fisher = jac.T @ jac / max(s2, 1e-300)
    w, v = np.linalg.eigh(fisher)
    w_floor = max(float(w.max()) * 1e-14, 1e-300)
    relative = np.sqrt((v**2 / np.maximum(w, w_floor)[None, :]).sum(axis=1))
    names = [(labels or {}).get(int(i), model.parameters[i]) for i in free]
    entries = []
    for j, name in enumerate(names):
        entry = _entry(theta0[j], relative[j])
        out["parameters"][name] = entry
        entries.append(name)
    for j, (i, d) in enumerate(zip(rows, cols), start=len(free)):
        entry = _entry(theta0[j], relative[j])
        out["initial"].setdefault(data.names[i], {})[model.states[d]] = entry
        entries.append(f"{model.states[d]}(t0) of {data.names[i]!r}")
    weakest = v[:, 0]
    order = np.argsort(-np.abs(weakest))
    out["weakest_direction"] = {
        "relative_stderr": float(1.0 / np.sqrt(max(w[0], w_floor))),
        "combination": {
            entries[m]: round(float(weakest[m]), 3) for m in order if abs(weakest[m]) >= 0.2
        },
    }
    return out


def _entry(value: float, relative: float) -> dict[str, Any]:
    return {
        "value": float(value),
        "stderr": float(relative * max(abs(value), _FLOOR)),
        "relative_stderr": float(relative),
        "status": _status(float(relative)),
    }


def identifiability_summary(
    model: MechanisticModel,
    fit: MechanisticFit,
    selection: Any | None,
    data: TrajectorySet,
) -> dict[str, Any]:
    """`discovered.json`'s `identifiability`: of the mechanistic fit and of the final model
    (every kept term's coefficient, by its `state:term` name), and a warning for every kept
    discovered term that involves an unmeasured state whose initial value, or whose own
    coefficient, the data do not determine."""
    out: dict[str, Any] = {
        "method": METHOD,
        "unmeasured": {
            name: [s for s, u in zip(data.states, row) if u]
            for name, row in zip(data.names, data.unmeasured())
        },
        "mechanistic": identifiability(
            model, fit.params, fit.y0, data, forced=forcing(model, data)
        ),
        "warnings": [],
    }
    if selection is None:
        return out
    tm, refit = selection.term_model, selection.refit
    pmask = np.asarray(tm.param_mask(selection.mask), dtype=float)
    final = dataclasses.replace(
        tm.model,
        guesses=tuple(np.asarray(refit.params, dtype=float) * pmask),
        # switched off, or (with unmeasured states) kept at the model file's known values
        fixed=tuple(
            bool(m == 0) or (bool(known) and bool(data.unmeasured().any()))
            for m, known in zip(pmask, tm.model.fixed, strict=True)
        ),
        bounds=(),
    )
    terms = selection.fitted_terms()
    labels = {
        int(i): f"{t.state}:{t.form}" for i, t in zip(tm.coefficient_index(), terms, strict=True)
    }
    out["final"] = identifiability(final, final.guesses, refit.y0, data, labels=labels)
    unmeasured = {s for states in out["unmeasured"].values() for s in states}
    for t in terms:
        if not (t.kept and t.origin == "discovered"):
            continue
        involved = sorted(s.name for s in t.form.free_symbols if s.name in unmeasured)
        if not involved:
            continue
        label = f"{t.state}:{t.form}"
        weak = [
            f"the initial value of {s} in trajectory {traj!r} is {e['status']}"
            for s in involved
            for traj, states in out["final"]["initial"].items()
            for name, e in states.items()
            if name == s and e["status"] != "determined"
        ]
        coef = out["final"]["parameters"].get(label)
        if coef is not None and coef["status"] != "determined":
            weak.append(f"its coefficient is {coef['status']}")
        if weak:
            out["warnings"].append(
                f"The discovered term {label} involves the unmeasured state(s)"
                f" {', '.join(involved)}, which the data cannot pin down: {'; '.join(weak)}."
                " Its coefficient may trade off against that state's scale; a known initial"
                " value ([initial] with fixed = true) or a measured quantity that depends on it"
                " would settle it."
            )
    return out
