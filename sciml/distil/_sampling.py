"""Dense samples of a trained UDE's field: the symbolic engines' regression targets."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import PRNGKeyArray

from .._data import TrajectorySet
from .._errors import NumericalError
from .._smooth import Smoothed
from .._solve import solve
from .._ude import TrainedUDE

DATA_SOURCE = -2  # `DenseSamples.source` of rows taken from the smoothed data (collocation)


@dataclasses.dataclass(frozen=True)
class DenseSamples:
    """States along integrated UDE trajectories and the network's residual there."""

    states: tuple[str, ...]
    residual_states: tuple[str, ...]
    t: np.ndarray  # (n,)
    X: np.ndarray  # (n, D) states
    residual: np.ndarray  # (n, R) network output on the residual states
    derivative: np.ndarray  # (n, D) the whole learned field
    source: np.ndarray  # (n,) trajectory index, -1 for the extra starts, -2 smoothed data

    def subset(self, rows: np.ndarray) -> DenseSamples:
        return dataclasses.replace(
            self,
            t=self.t[rows],
            X=self.X[rows],
            residual=self.residual[rows],
            derivative=self.derivative[rows],
            source=self.source[rows],
        )

    def from_ude(self) -> DenseSamples:
        """The rows sampled along the trained UDE."""
        return self.subset(self.source != DATA_SOURCE)

    def from_data(self) -> DenseSamples:
        """The rows from the smoothed data: spline states, and spline derivative minus the
        mechanistic field as the residual (no network involved)."""
        return self.subset(self.source == DATA_SOURCE)

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.X, columns=list(self.states))
        df.insert(0, "t", self.t)
        df.insert(0, "source", self.source)
        for j, s in enumerate(self.residual_states):
            df[f"residual_{s}"] = self.residual[:, j]
        for j, s in enumerate(self.states):
            df[f"d{s}_dt"] = self.derivative[:, j]
        return df

    @classmethod
    def from_frame(cls, df: pd.DataFrame, states, residual_states) -> DenseSamples:
        return cls(
            states=tuple(states),
            residual_states=tuple(residual_states),
            t=df["t"].to_numpy(),
            X=df[list(states)].to_numpy(),
            residual=df[[f"residual_{s}" for s in residual_states]].to_numpy(),
            derivative=df[[f"d{s}_dt" for s in states]].to_numpy(),
            source=df["source"].to_numpy(),
        )


def dense_samples(
    trained: TrainedUDE,
    data: TrajectorySet,
    *,
    key: PRNGKeyArray,
    n_per_trajectory: int = 200,
    n_extra_starts: int = 4,
    spread: float = 0.05,
    smoothed: Smoothed | None = None,
) -> DenseSamples:
    """Sample the learned field densely along trajectories of the trained UDE.

    Extra starts are data states perturbed by `spread` of each state's range; their trajectories
    are kept only inside the region the data cover (its bounding box, widened by 5%), since the
    network is not trusted far from the data.

    With `smoothed`, the smoothed data's interior points are appended (source `DATA_SOURCE`):
    there the residual is the spline's derivative minus the fitted mechanistic field, a target
    that does not depend on how well the network trained.
    """
    ude = trained.ude
    allys = np.concatenate([tr.y for tr in data.trajectories])
    lo, hi = allys.min(0), allys.max(0)
    pad = 0.05 * (hi - lo)
    lo_box, hi_box = lo - pad, hi + pad
    starts, spans, sources = [], [], []
    for i, tr in enumerate(data.trajectories):
        starts.append(trained.y0[i])
        spans.append((tr.t0, tr.t1))
        sources.append(i)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel()[-1].item())
    for k in range(n_extra_starts):
        i = k % len(data)
        tr = data.trajectories[i]
        row = tr.y[rng.integers(len(tr.t))]
        y0 = np.clip(row + spread * (hi - lo) * rng.standard_normal(len(row)), lo, hi)
        starts.append(y0)
        spans.append((tr.t0, tr.t1))
        sources.append(-1)
    ts = np.stack([np.linspace(a, b, n_per_trajectory) for a, b in spans])
    ys, ok = jax.vmap(lambda y0, t: solve(ude, y0, t)[:2])(
        jnp.asarray(np.stack(starts)), jnp.asarray(ts)
    )
    ys, ok = np.asarray(ys), np.asarray(ok)
    keep_t, keep_y, keep_s = [], [], []
    for j in range(len(starts)):
        inside = np.all((ys[j] >= lo_box) & (ys[j] <= hi_box), axis=1) & np.all(
            np.isfinite(ys[j]), axis=1
        )
        if sources[j] >= 0 and not ok[j]:
            raise NumericalError(
                "the trained UDE cannot be integrated",
                stage="dense",
                trajectory=data.names[sources[j]],
            )
        keep_t.append(ts[j][inside])
        keep_y.append(ys[j][inside])
        keep_s.append(np.full(inside.sum(), sources[j]))
    X = np.concatenate(keep_y)
    idx = list(ude.model.residual_index)
    residual = np.asarray(jax.vmap(ude.residual)(jnp.asarray(X)))[:, idx]
    derivative = np.asarray(jax.vmap(ude)(jnp.asarray(np.concatenate(keep_t)), jnp.asarray(X)))
    t, source = np.concatenate(keep_t), np.concatenate(keep_s)
    if smoothed is not None:
        keep = smoothed.interior if smoothed.interior.sum() >= 2 else slice(None)
        ts_, xs_, ds_ = smoothed.t[keep], smoothed.y[keep], smoothed.dydt[keep]
        params = ude.mechanistic_params()
        mech = np.asarray(
            jax.vmap(lambda tt, y: ude.model.vector_field(tt, y, params))(
                jnp.asarray(ts_), jnp.asarray(xs_)
            )
        )
        t, X = np.concatenate([t, ts_]), np.concatenate([X, xs_])
        residual = np.concatenate([residual, (ds_ - mech)[:, idx]])
        derivative = np.concatenate([derivative, ds_])
        source = np.concatenate([source, np.full(len(ts_), DATA_SOURCE)])
    return DenseSamples(
        states=ude.model.states,
        residual_states=ude.model.residual_states,
        t=t,
        X=X,
        residual=residual,
        derivative=derivative,
        source=source,
    )
