"""Stage 3: the universal differential equation — mechanistic field plus a neural residual.

    dy/dt = f_mech(t, y; p) + P · g_θ(y)

`P` scatters the network's outputs into the equations listed under `[residual]`. Training
follows the literature's advice: start from the mechanistic fit; fit the network on short
windows (the first part of every trajectory) growing to the whole series, with Adam; polish
with L-BFGS; and penalise the network's output so that it is used only where needed.
Trajectories are batched with `vmap`; many optimiser steps are compiled into one `lax.scan`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray

from ._checkpoint import Checkpoint
from ._config import Config
from ._data import TrajectorySet
from ._errors import NumericalError
from ._fingerprint import Fingerprint
from ._io import atomic_path, write_json
from ._mechanistic import (
    MechanisticFit,
    ParameterTransform,
    channel_residuals,
    forcing,
    initial_guesses,
    pinned_initial,
    simulate_forced,
)
from ._model import MechanisticModel
from ._smooth import Smoothed, smooth
from ._solve import solve


class ResidualNetwork(eqx.Module):
    """A small MLP on standardised states, its outputs scaled to the data's derivatives."""

    mlp: eqx.nn.MLP
    in_mean: Float[Array, " d"]
    in_scale: Float[Array, " d"]
    out_scale: Float[Array, " r"]

    def __init__(
        self,
        in_mean: Float[Array, " d"],
        in_scale: Float[Array, " d"],
        out_scale: Float[Array, " r"],
        *,
        width: int = 32,
        depth: int = 2,
        key: PRNGKeyArray,
    ):
        d, r = len(in_mean), len(out_scale)
        mlp = eqx.nn.MLP(d, r, width, depth, activation=jax.nn.gelu, key=key)
        # Start near zero: the UDE begins as the fitted mechanistic model.
        last = mlp.layers[-1]
        mlp = eqx.tree_at(
            lambda m: (m.layers[-1].weight, m.layers[-1].bias),
            mlp,
            (last.weight * 0.1, jnp.zeros_like(last.bias)),
        )
        self.mlp = mlp
        self.in_mean = jnp.asarray(in_mean)
        self.in_scale = jnp.asarray(in_scale)
        self.out_scale = jnp.asarray(out_scale)

    def __call__(self, y: Float[Array, " d"]) -> Float[Array, " r"]:
        mean, scale = jax.lax.stop_gradient((self.in_mean, self.in_scale))
        return jax.lax.stop_gradient(self.out_scale) * self.mlp((y - mean) / scale)


class UDE(eqx.Module):
    """Mechanistic field + neural residual on the model's residual states.

    `params` are the mechanistic parameters as trained: the values themselves, except for a
    parameter with declared bounds (`{ value, min, max }`), whose entry is the unconstrained
    coordinate of `ParameterTransform` (so no optimiser step can leave the bounds);
    `mechanistic_params()` gives the values.
    """

    model: MechanisticModel = eqx.field(static=True)
    params: Float[Array, " p"]
    network: ResidualNetwork

    def mechanistic_params(self) -> Float[Array, " p"]:
        fixed = jnp.asarray(self.model.fixed, dtype=bool)
        raw = jnp.where(fixed, jax.lax.stop_gradient(self.params), self.params)
        return bounded_values(self.model, raw)

    def residual(self, y: Float[Array, " d"]) -> Float[Array, " d"]:
        """The network's contribution to dy/dt, zero on states without a residual."""
        idx = jnp.asarray(self.model.residual_index, dtype=int)
        return jnp.zeros_like(y).at[idx].set(self.network(y).astype(y.dtype))

    def __call__(self, t: Float[Array, ""], y: Float[Array, " d"]) -> Float[Array, " d"]:
        return self.model.vector_field(t, y, self.mechanistic_params()) + self.residual(y)


#: Size limits of the residual network (a hostile setting must not exhaust memory).
MAX_WIDTH, MAX_DEPTH = 1024, 16


@dataclasses.dataclass(frozen=True)
class UDEConfig(Config):
    """Settings of UDE training.

    Step counts are maxima: each phase (a collocation warm start, one Adam phase per window,
    the L-BFGS polish) stops early once the loss on held-back points (every
    `validation_every`-th sample) has not improved by `min_improvement` (relative) for
    `patience` chunks of `chunk` steps.

    Multiple shooting: the ODE phases integrate each trajectory in pieces `shooting_periods`
    characteristic periods long (`2 pi * Smoothed.time_scale()` of the data), each from its own
    trained initial state, anchored by the data at its first point. An oscillating or chaotic
    series is then learned piece by piece instead of through one solve whose small phase errors
    grow over the whole span; slow series are one piece. `math.inf`: one shooting per
    trajectory.
    """

    width: int = 32
    depth: int = 2
    collocation_steps: int = 2000  # Adam on smoothed derivatives, no ODE solves (0: skip)
    windows: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # fraction of each trajectory's span
    adam_steps: int = 1500  # per window, at most
    learning_rate: float = 3e-3
    lbfgs_steps: int = 300
    linesearch_steps: int = 10  # L-BFGS: halvings of a step before the gradient is tried
    penalty: float = 1e-4  # weight of mean squared (scaled) network output
    train_mechanistic: bool = True
    rtol: float = 1e-6
    atol: float = 1e-8
    max_steps: int = 4096
    chunk: int = 50  # optimiser steps compiled into one call
    patience: int = 2  # chunks without improvement before a phase stops
    min_improvement: float = 0.02
    validation_every: int = 6
    shooting_periods: float = 1.0

    def problems(self) -> list[str]:
        problems = [
            f"{name} must be at least 1"
            for name in ("width", "depth", "chunk", "patience", "validation_every")
            if int(getattr(self, name)) < 1
        ]
        problems += [
            f"{name} must not be negative"
            for name in ("collocation_steps", "adam_steps", "lbfgs_steps", "max_steps")
            if int(getattr(self, name)) < 0
        ]
        if not self.windows or any(not 0 < w <= 1 for w in self.windows):
            problems.append("windows must be fractions in (0, 1]")
        elif list(self.windows) != sorted(self.windows):
            problems.append("windows must be increasing (each window grows the last)")
        if self.width > MAX_WIDTH or self.depth > MAX_DEPTH:
            problems.append(f"width must be at most {MAX_WIDTH} and depth at most {MAX_DEPTH}")
        problems += [
            f"{name} must be positive"
            for name in ("learning_rate", "rtol", "atol", "shooting_periods")
            if not float(getattr(self, name)) > 0
        ]
        if self.penalty < 0 or self.min_improvement < 0:
            problems.append("penalty and min_improvement must not be negative")
        return problems

    def quick(self) -> UDEConfig:
        return dataclasses.replace(self, adam_steps=200, lbfgs_steps=100)


@dataclasses.dataclass(frozen=True)
class TrainedUDE:
    ude: UDE
    y0: np.ndarray  # (N, D) fitted initial states
    history: dict[str, list[float]]
    config: UDEConfig

    def save(self, folder: str | Path) -> None:
        """`ude.eqx` (weights and initial states), `ude.json` and `history.json` (`load_ude`)."""
        folder = Path(folder)
        with atomic_path(folder / "ude.eqx") as tmp:
            eqx.tree_serialise_leaves(tmp, (self.ude, jnp.asarray(self.y0)))
        write_json(
            folder / "ude.json",
            {
                "config": self.config.to_dict(),
                "model": self.ude.model.describe(),
                "parameters": dict(
                    zip(
                        self.ude.model.parameters,
                        np.asarray(self.ude.mechanistic_params()).tolist(),
                    )
                ),
                "n_trajectories": int(self.y0.shape[0]),
            },
        )
        write_json(folder / "history.json", self.history)


def _bounded(model: MechanisticModel) -> tuple[np.ndarray, ParameterTransform] | None:
    """The parameters with declared bounds and their transform (None: no bounds)."""
    bounds = np.asarray(model.parameter_bounds, dtype=float).reshape(-1, 2)
    idx = np.flatnonzero(np.isfinite(bounds).any(axis=1))
    if not len(idx):
        return None
    guesses = np.asarray(model.guesses, dtype=float)[idx]
    return idx, ParameterTransform.make(guesses, bounds[idx, 0], bounds[idx, 1])


def bounded_values(model: MechanisticModel, raw):
    """Parameter values from `UDE.params` (bounded parameters through their transform)."""
    found = _bounded(model)
    if found is None:
        return raw
    idx, transform = found
    return raw.at[idx].set(transform.to_p(raw[idx]))


def bounded_coordinates(model: MechanisticModel, values):
    """The inverse of `bounded_values`: what `UDE.params` holds for parameter `values`."""
    values = jnp.asarray(values, dtype=jnp.float64)
    found = _bounded(model)
    if found is None:
        return values
    idx, transform = found
    return values.at[idx].set(transform.to_z(values[idx]))


def _derivative_scale(data: TrajectorySet) -> np.ndarray:
    """Per-state size of dy/dt, from the smoothed data (raw differences of noisy samples
    mostly measure the noise)."""
    s = np.std(smooth(data).dydt, axis=0)
    return np.where(s > 1e-12, s, 1.0)


def init_ude(
    model: MechanisticModel,
    params: Sequence[float],
    data: TrajectorySet,
    *,
    width: int = 32,
    depth: int = 2,
    key: PRNGKeyArray,
) -> UDE:
    """A UDE whose mechanistic part starts at `params`, its network scaled to `data`."""
    allys = np.concatenate([tr.y for tr in data.trajectories])
    out_scale = _derivative_scale(data)[list(model.residual_index)]
    net = ResidualNetwork(
        allys.mean(0),
        np.where(allys.std(0) > 1e-12, allys.std(0), 1.0),
        out_scale,
        width=width,
        depth=depth,
        key=key,
    )
    return UDE(model, bounded_coordinates(model, params), net)


def _windowed(ts, mask, fraction):
    span = ts[:, -1:] - ts[:, :1]
    end = ts[:, :1] + fraction * span
    keep = (ts <= end + 1e-12) & (mask > 0)
    # Times past the window repeat the window's last time: the solve stops there.
    last = jnp.max(jnp.where(keep, ts, -jnp.inf), axis=1, keepdims=True)
    return jnp.minimum(ts, last), mask * keep


def _make_loss(static, ts, obs, mask, scale, config: UDEConfig):
    """The training loss: mean squared scaled error over the measured values (`obs` =
    (`values`, `measured`, state estimates `ys`, `pinned`, `pinned_values`), as
    `TrajectorySet.padded_channels` and `_pieces` give them; `mask` the samples in play), plus
    the penalty on the network's output. Initial values marked `pinned` (known) are not
    trained."""
    values, measured, ys, pinned, pinned_values, coded = obs

    def loss(trainable):
        ude, y0s = eqx.combine(trainable, static)
        y0s = _initial_states(y0s, pinned, pinned_values, coded)

        def one(y0, t):
            return solve(
                ude, y0, t, rtol=config.rtol, atol=config.atol, max_steps=config.max_steps
            )[:2]

        pred, ok = jax.vmap(one)(y0s, ts)
        seen = mask[..., None] * measured
        err = channel_residuals(ude.model, ude.mechanistic_params(), ts, pred, values, seen, scale)
        fit = jnp.sum(err**2) / jnp.maximum(jnp.sum(seen), 1.0)
        safe = jnp.where(jnp.isfinite(pred), pred, ys)
        out = jax.vmap(jax.vmap(ude.network))(safe) / ude.network.out_scale
        reg = jnp.sum(mask[..., None] * out**2) / (jnp.sum(mask) * out.shape[-1])
        value = fit + config.penalty * reg
        return jnp.where(jnp.all(ok), value, jnp.inf)

    return loss


def _initial_states(y0s, pinned, pinned_values, coded):
    """The pieces' initial states from what is trained: known ones pinned, and the unmeasured
    ones trained as unconstrained coordinates (`coded` = rows, columns and the
    `ParameterTransform` of those entries: within their `[initial]` bounds, log-like in size, so
    that an optimiser's step does not throw a tiny initial value negative)."""
    rows, cols, kind, scale, lo, hi = coded
    z = y0s[rows, cols]
    ez = jnp.exp(jnp.minimum(z, 700.0))
    decoded = jnp.select(
        [kind == 0, kind == 1, kind == 2],
        [scale * jnp.sinh(jnp.clip(z, -700.0, 700.0)), lo + scale * ez, hi - scale * ez],
        lo + (hi - lo) * jax.nn.sigmoid(z),
    )
    return jnp.where(pinned, pinned_values, y0s.at[rows, cols].set(decoded))


def _first_order_steps(loss, trainable, opt_state, optimizer, n):
    """`n` steps of a first-order optimiser in one `lax.scan`; a step whose loss is not finite
    (a failed solve) leaves the parameters and the optimiser state where they were."""

    def step(carry, _):
        params, state = carry
        value, grads = jax.value_and_grad(loss)(params)
        updates, new_state = optimizer.update(grads, state, params)
        new_params = eqx.apply_updates(params, updates)
        good = jnp.isfinite(value)
        params, state = jax.tree.map(
            lambda a, b: jnp.where(good, a, b), (new_params, new_state), (params, state)
        )
        return (params, state), value

    (trainable, opt_state), values = jax.lax.scan(step, (trainable, opt_state), None, length=n)
    return trainable, opt_state, values


@eqx.filter_jit
def _adam_chunk(trainable, static, opt_state, ts, obs, mask, scale, *, optimizer, config, n):
    loss = _make_loss(static, ts, obs, mask, scale, config)
    return _first_order_steps(loss, trainable, opt_state, optimizer, n)


@eqx.filter_jit
def _validation_loss(trainable, static, ts, obs, mask, scale, *, config):
    """The data term of the loss on the held-back points (no penalty)."""
    loss = _make_loss(static, ts, obs, mask, scale, dataclasses.replace(config, penalty=0.0))
    return loss(trainable)


def _collocation_loss(static, t, x, dydt, dscale, penalty):
    """Derivative matching: the UDE's field at smoothed states against smoothed derivatives."""

    def loss(trainable):
        ude, _ = eqx.combine(trainable, static)
        err = (jax.vmap(ude)(t, x) - dydt) / dscale
        out = jax.vmap(ude.network)(x) / ude.network.out_scale
        return jnp.mean(err**2) + penalty * jnp.mean(out**2)

    return loss


@eqx.filter_jit
def _collocation_chunk(trainable, static, opt_state, t, x, dydt, dscale, *, optimizer, config, n):
    loss = _collocation_loss(static, t, x, dydt, dscale, config.penalty)
    return _first_order_steps(loss, trainable, opt_state, optimizer, n)


class LBFGSState(eqx.Module):
    """L-BFGS memory over the flattened trainable leaves: the last `m` steps `s` and gradient
    changes `y` (a ring buffer, `count` pairs stored in all), the point and gradient of the last
    step, and whether the method is stuck (no step along the gradient lowered the loss)."""

    s: Float[Array, "m n"]
    y: Float[Array, "m n"]
    count: Array
    x: Float[Array, " n"]
    x_prev: Float[Array, " n"]
    g_prev: Float[Array, " n"]
    started: Array
    stuck: Array
    value: Array  # the loss at x (inf before the first step)


def lbfgs_init(trainable, memory: int = 10) -> LBFGSState:
    flat, _ = ravel_pytree(trainable)
    zeros = jnp.zeros((memory, flat.size), flat.dtype)
    no = jnp.asarray(False)
    count, inf = jnp.asarray(0, jnp.int32), jnp.asarray(jnp.inf, flat.dtype)
    return LBFGSState(zeros, zeros, count, flat, flat, flat, no, no, inf)


def _two_loop(g, state: LBFGSState):
    """-H·g by the two-loop recursion over the stored pairs (H0 = s·y / y·y of the newest)."""
    m = state.s.shape[0]
    k = jnp.minimum(state.count, m)
    rho = 1.0 / jnp.maximum(jnp.sum(state.s * state.y, axis=1), 1e-300)

    def newest_first(i, carry):
        q, alpha = carry
        j = (state.count - 1 - i) % m
        a = jnp.where(i < k, rho[j] * (state.s[j] @ q), 0.0)
        return q - a * state.y[j], alpha.at[j].set(a)

    q, alpha = jax.lax.fori_loop(0, m, newest_first, (g, jnp.zeros(m, g.dtype)))
    last = (state.count - 1) % m
    gamma = (state.s[last] @ state.y[last]) / jnp.maximum(state.y[last] @ state.y[last], 1e-300)

    def oldest_first(i, r):
        j = (state.count - k + i) % m
        b = rho[j] * (state.y[j] @ r)
        return jnp.where(i < k, r + state.s[j] * (alpha[j] - b), r)

    return -jax.lax.fori_loop(0, m, oldest_first, gamma * q)


def _lbfgs_step(loss, unravel, state: LBFGSState, max_halvings: int):
    """One L-BFGS step with a backtracking (Armijo) line search that evaluates the loss only:
    one gradient per step, so the compiled program holds one adjoint solve. A pair (s, y) with
    s·y <= 0 (possible without the Wolfe curvature condition) is not stored."""
    flat_loss = lambda x: loss(unravel(x))  # noqa: E731
    x = state.x
    value, g = jax.value_and_grad(flat_loss)(x)
    s, y = x - state.x_prev, g - state.g_prev
    keep = state.started & (s @ y > 1e-12 * jnp.linalg.norm(s) * jnp.linalg.norm(y))
    j = state.count % state.s.shape[0]
    state = dataclasses.replace(
        state,
        s=jnp.where(keep, state.s.at[j].set(s), state.s),
        y=jnp.where(keep, state.y.at[j].set(y), state.y),
        count=state.count + keep,
    )
    steepest = -g / jnp.maximum(jnp.linalg.norm(g), 1.0)  # first step: a ball of radius 1
    d = jnp.where(state.count > 0, _two_loop(g, state), steepest)
    d = jnp.where(g @ d < 0, d, steepest)
    slope = g @ d

    def searching(c):
        eta, v, i = c
        armijo = jnp.isfinite(v) & (v <= value + 1e-4 * eta * slope)
        return (i == 0) | (~armijo & (i <= max_halvings))

    def halve(c):
        eta, _, i = c
        eta = jnp.where(i == 0, 1.0, 0.5 * eta)
        return eta, flat_loss(x + eta * d), i + 1

    eta, v, _ = jax.lax.while_loop(searching, halve, (1.0, jnp.inf, 0))
    ok = jnp.isfinite(v) & (v <= value + 1e-4 * eta * slope) & (v < value)
    # A search that finds no lower loss forgets the memory and tries the gradient next; along
    # the gradient too: stuck (a minimum, to the line search's resolution), and later steps
    # cost nothing.
    state = dataclasses.replace(
        state,
        x=jnp.where(ok, x + eta * d, x),
        x_prev=x,
        g_prev=g,
        started=ok,
        count=jnp.where(ok, state.count, 0),
        stuck=~ok & (state.count == 0),
        value=jnp.where(ok, v, value),
    )
    return state, state.value


@eqx.filter_jit
def _lbfgs_chunk(trainable, static, opt_state, ts, obs, mask, scale, *, config, n):
    """`n` L-BFGS steps from `opt_state` (whose `x` is the trainable leaves, flattened): the
    new trainable leaves, state and the loss after each step."""
    loss = _make_loss(static, ts, obs, mask, scale, config)
    _, unravel = ravel_pytree(trainable)

    def step(state, _):
        return jax.lax.cond(
            state.stuck,
            lambda st: (st, st.value),
            lambda st: _lbfgs_step(loss, unravel, st, config.linesearch_steps),
            state,
        )

    opt_state, values = jax.lax.scan(step, opt_state, None, length=n)
    return unravel(opt_state.x), opt_state, values


@dataclasses.dataclass(frozen=True)
class _TrainState:
    trainable: object
    adam: object
    lbfgs: object

    def leaves(self):
        return (self.trainable, self.adam, self.lbfgs)


def _fingerprint(config: UDEConfig, fit: MechanisticFit, data: TrajectorySet) -> str:
    # The optimisers' states are part of a checkpoint: another L-BFGS's state does not resume.
    fp = Fingerprint().json({**config.to_dict(), "lbfgs": "armijo-v1"})
    for a in (fit.params, fit.y0, *data.padded()):
        fp.array(a, np.float64)
    return fp.hexdigest(16)


class _Checkpoint:
    """The UDE's training state as a checkpoint `PREFIX.eqx` (`sciml._checkpoint`: progress,
    history and arrays in one file replaced atomically, each hash checked on load;
    `PREFIX.json` repeats the state for people)."""

    def __init__(self, prefix: Path, fingerprint: str):
        self.checkpoint = Checkpoint(prefix.with_suffix(""), fingerprint)

    def save(self, state: _TrainState, history: dict, done: int, early: dict) -> None:
        progress = {"done": done, "history": history, "early": early}
        self.checkpoint.save(progress, state.leaves())

    def load(self, like: _TrainState):
        loaded = self.checkpoint.load(like.leaves())
        if loaded is None:
            return None  # none yet, or of another configuration or data: start afresh
        meta, leaves = loaded
        return _TrainState(*leaves), meta["history"], int(meta["done"]), dict(meta["early"])

    def remove(self) -> None:
        self.checkpoint.remove()


def _validation_split(mask: np.ndarray, every: int) -> tuple[np.ndarray, np.ndarray]:
    """(training mask, validation mask): every `every`-th sample of each trajectory (never the
    first) is held back, where a trajectory has at least 2 * `every` samples."""
    val = np.zeros_like(mask)
    for i in range(mask.shape[0]):
        rows = np.flatnonzero(mask[i] > 0)
        if len(rows) >= 2 * every:
            val[i, rows[every // 2 + 1 :: every]] = 1.0
    return mask * (1.0 - val), val


def _plan(config: UDEConfig) -> list[tuple[str, float, int, int]]:
    """The schedule as a flat list of chunks (phase name, window, steps, phase index), so that a
    checkpoint is "chunks done so far"."""
    phases = [("collocation", 1.0, config.collocation_steps)]
    phases += [("adam", w, config.adam_steps) for w in config.windows]
    phases += [("lbfgs", 1.0, config.lbfgs_steps)]
    return [
        (name, fraction, min(config.chunk, steps - start), p)
        for p, (name, fraction, steps) in enumerate(phases)
        for start in range(0, steps, config.chunk)
    ]


def _early_stop(early: dict, phase: int, value: float, config: UDEConfig) -> None:
    """Update the early-stopping record with a phase's latest held-back loss."""
    if early.get("phase") != phase:
        early.update(phase=phase, best=math.inf, bad=0)
    if early.get("best") is None:  # saved as null in a checkpoint (JSON has no infinity)
        early["best"] = math.inf
    if math.isfinite(value) and value < early["best"] * (1.0 - config.min_improvement):
        early.update(best=value, bad=0)
    else:
        early["bad"] += 1
    if early["bad"] >= config.patience:
        early.setdefault("stopped", []).append(phase)


def train_ude(
    fit: MechanisticFit,
    data: TrajectorySet,
    *,
    key: PRNGKeyArray,
    config: UDEConfig = UDEConfig(),
    optimizer: optax.GradientTransformation | None = None,
    progress: Callable[[str, int, int, float], None] | None = None,
    checkpoint: str | Path | None = None,
    smoothed: Smoothed | None = None,
) -> TrainedUDE:
    """Train a UDE on `data`, starting from the mechanistic fit `fit`.

    Phases: (1) collocation — Adam on the field against smoothing-spline derivatives of the
    data, with no ODE solve, which puts the network near the answer in seconds; (2) Adam through
    the ODE solve on windows growing to the whole series; (3) an L-BFGS polish. Every phase
    stops early when the held-back points stop improving (see `UDEConfig`).

    **Arguments:**
    - `fit`: the mechanistic stage's result (parameters and initial states).
    - `data`: the trajectories.
    - `key`: initialises the network (keyword-only).
    - `config`: phases, maximum steps, early stopping, penalty, tolerances.
    - `optimizer`: the first-order optimiser for phases 1-2 (default Adam).
    - `progress`: called as `progress(stage, step, total, loss)` after every chunk.
    - `checkpoint`: a file path prefix; the state is saved there after every chunk, and a run
      started again with the same settings and data resumes from it, ending with the same
      result as an uninterrupted run (the chunks and the stopping rule are deterministic).
    - `smoothed`: the data's smoothed states and derivatives (computed when not given).

    Partial observation (docs/partial-observation.md): the loss sees only measured values
    (states where measured, observation equations' values); a state that is not measured
    everywhere is estimated by the mechanistic fit's simulation, which gives the network's
    scaling and the pieces' first states; its initial values are trained (a known one,
    `[initial]` with `fixed`, is kept). The collocation warm start matches the derivatives of
    the directly measured states only (none measured: no warm start).
    """
    model = fit.model
    if not model.residual_states:
        raise ValueError("the model declares no [residual] states: nothing to train")
    partial = data.partial
    obs_data, data = data, estimate_states(fit, data)
    ude = init_ude(model, fit.params, data, width=config.width, depth=config.depth, key=key)
    smoothed = smoothed if smoothed is not None and not partial else smooth(data)
    horizon = config.shooting_periods * 2 * math.pi * smoothed.time_scale()
    if partial and obs_data.unmeasured().any():
        # One shooting per trajectory: each piece's own start would let an unmeasured state's
        # scale (and its coefficients) differ from piece to piece.
        horizon = math.inf
    shooting = data.segments(horizon)
    first = shooting.first
    ts, ys, mask = (jnp.asarray(a) for a in shooting.pieces.padded())
    train_mask, val_mask = (
        jnp.asarray(m) for m in _validation_split(np.asarray(mask), config.validation_every)
    )
    has_val = bool(np.asarray(val_mask).sum() > 0)
    scale = jnp.asarray(obs_data.channel_scale())
    # Every piece starts from the smoothed state at its first point; with a collocation warm
    # start the trajectories' own starts too: a mechanistic fit that misses part of the
    # dynamics (with no theory, dy/dt = 0) can put its fitted y0 far off.
    y0s = smoothed.y[shooting.rows]
    if not config.collocation_steps:
        y0s[first] = fit.y0
    pinned = np.zeros(y0s.shape, dtype=bool)
    code = np.zeros(y0s.shape, dtype=bool)
    transform = ParameterTransform.make(np.zeros(0))
    if partial:  # a state never measured starts where the mechanistic fit put it
        unmeasured = obs_data.unmeasured()
        y0s[first] = np.where(unmeasured, fit.y0, y0s[first])
        pinned[first] = pinned_initial(model, obs_data)
        code[first] = unmeasured & ~pinned[first]
        bounds = initial_guesses(model, obs_data)[..., 1:3]
        lo, hi = (bounds[code[first]][:, k] for k in range(2))
        guess = np.clip(y0s[code], lo, hi)
        transform = ParameterTransform.make(guess, lo, hi)
        y0s[code] = np.asarray(transform.to_z(jnp.asarray(guess)))
    rows, cols = np.nonzero(code)
    lo_f, hi_f = transform._finite_bounds()
    obs = (
        *(jnp.asarray(a) for a in shooting.pieces.padded_channels()),
        ys,
        jnp.asarray(pinned),
        jnp.asarray(y0s),
        tuple(jnp.asarray(a) for a in (rows, cols, transform.kind, transform.scale, lo_f, hi_f)),
    )
    y0s = jnp.asarray(y0s)
    # Collocation on the states measured at (nearly) every sample; the others' derivatives
    # are the mechanistic fit's, not the data's.
    measured_share = np.concatenate(
        [tr.mask(len(obs_data.observables))[:, : len(model.states)] for tr in obs_data.trajectories]
    ).mean(axis=0)
    direct = measured_share >= 0.8
    colloc = None
    if config.collocation_steps and direct.any():
        keep = smoothed.interior if smoothed.interior.sum() >= 2 else slice(None)
        colloc = tuple(
            jnp.asarray(a) for a in (smoothed.t[keep], smoothed.y[keep], smoothed.dydt[keep])
        )
        dscale = jnp.asarray(np.where(direct, _derivative_scale(data), np.inf))

    def is_trainable(leaf):
        return eqx.is_inexact_array(leaf)

    filter_spec = jax.tree.map(is_trainable, (ude, y0s))
    if not config.train_mechanistic:
        filter_spec = eqx.tree_at(lambda s: s[0].params, filter_spec, False)
    filter_spec = eqx.tree_at(
        lambda s: (s[0].network.in_mean, s[0].network.in_scale, s[0].network.out_scale),
        filter_spec,
        (False, False, False),
    )
    trainable, static = eqx.partition((ude, y0s), filter_spec)

    optimizer = optimizer if optimizer is not None else optax.adam(config.learning_rate)
    plan = _plan(config)
    total = sum(n for *_, n, _ in plan)
    state = _TrainState(
        trainable=trainable,
        adam=optimizer.init(trainable),
        lbfgs=lbfgs_init(trainable),
    )
    history: dict[str, list[float]] = {
        "collocation": [],
        "adam": [],
        "lbfgs": [],
        "validation": [],
    }
    early: dict = {"stopped": []}
    done = 0
    ckpt = _Checkpoint(Path(checkpoint), _fingerprint(config, fit, data)) if checkpoint else None
    if ckpt is not None and (restored := ckpt.load(state)) is not None:
        state, history, done, early = restored
    stopped = False
    for k, (phase, fraction, n, p) in enumerate(plan):
        if k < done or stopped or p in early["stopped"] or (phase == "collocation" and not colloc):
            continue
        ts_w, train_w, val_w = ts, train_mask, val_mask
        if phase == "collocation":
            trainable, opt_state, values = _collocation_chunk(
                state.trainable,
                static,
                state.adam,
                *colloc,
                dscale,
                optimizer=optimizer,
                config=config,
                n=n,
            )
            state = dataclasses.replace(state, trainable=trainable, adam=opt_state)
            label = "collocation (no ODE solves)"
        elif phase == "adam":
            if early.get("reset_adam") is None:  # the ODE phases start with fresh moments
                early["reset_adam"] = k
                state = dataclasses.replace(state, adam=optimizer.init(state.trainable))
            ts_w, in_window = _windowed(ts, mask, fraction)
            train_w, val_w = in_window * train_mask, in_window * val_mask
            trainable, opt_state, values = _adam_chunk(
                state.trainable,
                static,
                state.adam,
                ts_w,
                obs,
                train_w,
                scale,
                optimizer=optimizer,
                config=config,
                n=n,
            )
            state = dataclasses.replace(state, trainable=trainable, adam=opt_state)
            label = f"Adam, window {fraction:.0%}"
        else:
            if not history["lbfgs"]:  # L-BFGS starts where Adam stopped
                state = dataclasses.replace(state, lbfgs=lbfgs_init(state.trainable))
            candidate, lbfgs_state, values = _lbfgs_chunk(
                state.trainable,
                static,
                state.lbfgs,
                ts,
                obs,
                train_mask,
                scale,
                config=config,
                n=n,
            )
            if np.all(np.isfinite(np.asarray(values))):
                # Every step it takes lowers the loss: its last point is its best.
                state = dataclasses.replace(state, trainable=candidate, lbfgs=lbfgs_state)
            else:
                stopped = True  # keep the last good parameters: a NaN never reaches the model
            label = "L-BFGS, whole series"
        values = np.asarray(values)
        history[phase].extend(values.tolist())
        if phase == "collocation":
            monitor = float(values[-1])
        elif has_val:
            monitor = float(
                _validation_loss(state.trainable, static, ts_w, obs, val_w, scale, config=config)
            )
        else:
            monitor = float(values[-1])
        history["validation"].append(monitor)
        _early_stop(early, p, monitor, config)
        if ckpt is not None:
            ckpt.save(state, history, k + 1, early)
        if progress is not None:
            progress(label, sum(m for *_, m, _ in plan[: k + 1]), total, float(values[-1]))
    trainable = state.trainable
    ude, y0s = eqx.combine(trainable, static)
    y0s = _initial_states(y0s, *obs[3:])
    leaves = jax.tree.leaves(eqx.filter(ude, eqx.is_inexact_array))
    if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves):
        raise NumericalError(
            "training produced non-finite weights",
            stage="ude",
            hint="a smaller learning rate or fewer steps, bounds for the parameters ({ value,"
            " min, max } in the model file), a shorter time window of the data, or a model"
            " that stays finite over the data's span",
        )
    if ckpt is not None:
        ckpt.remove()
    return TrainedUDE(ude=ude, y0=np.asarray(y0s)[first], history=history, config=config)


def estimate_states(source: MechanisticFit | TrainedUDE, data: TrajectorySet) -> TrajectorySet:
    """`data` with every value not measured estimated by a fitted model (a mechanistic fit or a
    trained UDE) simulated from its initial states; `data` itself when everything is
    measured. What stages that work on states (smoothing, dense samples, the refit's starts)
    use in place of data that lack some."""
    if not data.partial:
        return data
    ts = data.padded()[0]
    if isinstance(source, TrainedUDE):
        from .distil import simulate_field

        pred, _ = simulate_field(source.ude, source.y0, ts)
    else:
        forced = forcing(source.model, data)
        params = jnp.asarray(source.params)
        pred, _ = simulate_forced(source.model, params, source.y0, ts, forced)
    pred = np.asarray(pred)
    if not np.all(np.isfinite(pred)):
        raise NumericalError(
            "the fitted model cannot be integrated over the data's span to estimate the"
            " states that were not measured",
            stage="ude" if isinstance(source, TrainedUDE) else "mechanistic",
            trajectory=data.names[int(np.argmin(np.isfinite(pred).all(axis=(1, 2))))],
            hint="other guesses or bounds for the parameters and [initial] values ({ value,"
            " min, max } in the model file), or a shorter time window of the data",
        )
    return data.with_states(list(pred))


def load_ude(folder: str | Path, model: MechanisticModel, data: TrajectorySet) -> TrainedUDE:
    """Load a UDE saved by `TrainedUDE.save` (the model and data give the shapes)."""
    folder = Path(folder)
    meta = json.loads((folder / "ude.json").read_text())
    config = UDEConfig.from_dict(meta["config"])
    like = init_ude(
        model, model.guesses, data, width=config.width, depth=config.depth, key=jax.random.key(0)
    )
    y0_like = jnp.zeros((meta["n_trajectories"], len(model.states)))
    ude, y0 = eqx.tree_deserialise_leaves(folder / "ude.eqx", (like, y0_like))
    history = folder / "history.json"
    history = json.loads(history.read_text()) if history.exists() else {}
    return TrainedUDE(ude=ude, y0=np.asarray(y0), history=history, config=config)


def relative_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-column ‖a − b‖ / ‖b‖."""
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm(a - b, axis=0) / np.maximum(np.linalg.norm(b, axis=0), 1e-300)
