"""Evaluation of fitted models: a model with fixed numbers as a vector field, its simulation
from given starts, and the root-mean-square error of predictions against the data."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._model import MechanisticModel
from .._solve import solve


@eqx.filter_jit
def _simulate(field, y0s, ts):
    return jax.vmap(lambda y0, t: solve(field, y0, t, max_steps=16384)[:2])(y0s, ts)


def simulate_field(field, y0s: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integrate `field(t, y)` (an equinox module) from each y0 over its row of `ts`; the states
    are non-finite where a solve failed. Compiled once per field structure and shape."""
    ys, ok = _simulate(field, jnp.asarray(y0s), jnp.asarray(ts))
    return np.asarray(ys), np.asarray(ok)


def simulate_grids(
    field, runs: list[tuple[np.ndarray, np.ndarray]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`simulate_field` for several (y0s, ts) pairs of different widths in one compiled
    program: the time rows are padded to one width by repeating their last time, solved as
    one batch and cut back. One compilation per field instead of one per width; every row is
    still its own solve, so a failure past one grid's end does not touch another's."""
    width = max(ts.shape[1] for _, ts in runs)
    y0s = np.concatenate([np.asarray(y0) for y0, _ in runs])
    ts = np.concatenate(
        [np.pad(t, ((0, 0), (0, width - t.shape[1])), mode="edge") for _, t in runs]
    )
    ys, ok = simulate_field(field, y0s, ts)
    out, start = [], 0
    for _, t in runs:
        stop = start + t.shape[0]
        out.append((ys[start:stop, : t.shape[1]], ok[start:stop]))
        start = stop
    return out


class ModelField(eqx.Module):
    """A `MechanisticModel` with fixed parameter values, as a vector field module."""

    model: MechanisticModel = eqx.field(static=True)
    params: jax.Array

    def __call__(self, t, y):
        return self.model.vector_field(t, y, self.params)


def model_field(model: MechanisticModel, params) -> ModelField:
    return ModelField(model, jnp.asarray(params, dtype=jnp.float64).reshape(-1))


def rmse(pred: np.ndarray, obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-state RMSE over the samples in `mask` (N, M), or over the measured values in `mask`
    (N, M, D) (NaN for a state never measured)."""
    mask = mask if mask.ndim == pred.ndim else mask[..., None]
    err = mask * np.where(np.isfinite(pred), pred - np.nan_to_num(obs), np.inf)
    count = np.broadcast_to(mask, pred.shape).sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.sqrt(np.nansum(err**2, axis=(0, 1)) / count), np.nan)
