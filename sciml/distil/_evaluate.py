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
