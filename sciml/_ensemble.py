"""Ensembles of UDEs trained together in one compiled program, and what their members agree on.

K members differ in the network's initial weights (one key each) and in a bootstrap resample
of the data: each member draws the training points with replacement, written as integer
weights on the points (so every member has the same shapes). All K advance together: each
Adam step through the ODE is one solve of the members' stacked states (K, D), their fields
evaluated under `eqx.filter_vmap` (a `vmap` of K separate solves batches K adaptive while
loops, and costs as much per member); the step-size controller takes the worst member's error,
and a member that leaves the box around the data is frozen there rather than failing everyone's
solve. The schedule is `train_ude`'s first two phases: collocation on the smoothed
derivatives (its points resampled the same way), then Adam through the ODE solve on growing
windows. Each member stops a phase on its own when its loss on the held-back points (the same
points for every member, never resampled) stops improving; a stopped member is frozen while
the others go on, and a phase ends when every member has stopped or its steps are spent. There
is no L-BFGS polish: its line search does not batch well, and the ensemble is for spread, not
for the last digit of one fit.

Every member is then distilled like the main run (dense samples, the symbolic engines, selection
and refit through the ODE), its model refit to a random half of the data (`half_sample`), and
`summarise_ensemble` reports for every
discovered term the fraction of members whose final model includes it and the spread of its
refit coefficient over those members.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from jaxtyping import PRNGKeyArray

from ._data import BLOW_UP, MIN_POINTS, TrajectorySet
from ._errors import NumericalError
from ._mechanistic import MechanisticFit
from ._smooth import Smoothed, smooth
from ._ude import (
    TrainedUDE,
    UDEConfig,
    _derivative_scale,
    _first_order_steps,
    _validation_split,
    _windowed,
    init_ude,
)

LEVEL = 0.9  # central coverage of the coefficient intervals


# -- training ----------------------------------------------------------------------------------
def bootstrap_weights(mask: np.ndarray, k: int, *, seed: int, resample: bool = True) -> np.ndarray:
    """(k, *mask.shape) integer weights: for each member, the counts of a draw with replacement
    of as many points as `mask` holds, from the points `mask` holds (all ones without
    `resample`). Points outside `mask` get weight 0."""
    mask = np.asarray(mask) > 0
    idx = np.flatnonzero(mask.ravel())
    out = np.zeros((k, mask.size))
    rng = np.random.default_rng(seed)
    for m in range(k):
        if resample and len(idx):
            out[m, idx] = np.bincount(rng.integers(len(idx), size=len(idx)), minlength=len(idx))
        else:
            out[m, idx] = 1.0
    return out.reshape((k, *mask.shape))


def _members_norm(error):
    """The step-size controller's norm: the worst member's RMS error, so that each member is
    solved as accurately as on its own (an RMS over every member would dilute it)."""
    return jnp.max(jnp.sqrt(jnp.mean(error**2, axis=-1)))


def _joint_solve(field, y0, ts, config: UDEConfig):
    """`_solve.solve` for the stacked states (K, D) of every member, with `_members_norm`."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: field(t, y)),
        diffrax.Tsit5(),
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=y0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(
            rtol=config.rtol, atol=config.atol, norm=_members_norm
        ),
        max_steps=config.max_steps,
        throw=False,
    )
    ok = sol.result == diffrax.RESULTS.successful
    return jnp.where(ok, sol.ys, jnp.inf), ok


def _member_field(static, active, bound):
    """The K members' fields as one vector field on the stacked state (K, D): each member's
    UDE on its own rows, zero for a stopped member and for one whose state has left the box
    `bound` (a member that blows up freezes there instead of failing everyone's solve)."""

    def field(trainables, t, y):
        def one(trainable, y_m):
            ude, _ = eqx.combine(trainable, static)
            return ude(t, y_m)

        dy = eqx.filter_vmap(one)(trainables, y)
        inside = jnp.all(jnp.abs(y) <= bound, axis=1) & jnp.all(jnp.isfinite(dy), axis=1)
        return jnp.where((active & inside)[:, None], dy, 0.0)

    return field


def half_sample(data: TrajectorySet, *, seed: int) -> TrajectorySet:
    """Half of each trajectory's points, drawn without replacement (times stay distinct).

    A least-squares fit to a random half of n points varies about the fit to all n as much as
    a fit to a bootstrap resample does (variance sigma^2 (1/(n/2) - 1/n) = sigma^2 / n: the
    half-sampling estimate of a bootstrap), and unlike a resample with repeats it keeps the
    times strictly increasing, which the smoothing and the shooting segments need."""
    rng = np.random.default_rng(seed)
    trajectories = []
    for tr in data.trajectories:
        n = len(tr.t)
        m = max(n // 2, min(n, MIN_POINTS))
        rows = np.sort(rng.choice(n, size=m, replace=False))
        trajectories.append(dataclasses.replace(tr, t=tr.t[rows], y=tr.y[rows]))
    return dataclasses.replace(data, trajectories=tuple(trajectories))


def _ode_losses(static, ts, ys, weights, scale, active, bound, config: UDEConfig, penalty):
    """Every member's `train_ude` loss through the ODE, weighted per point (0: unused), from
    ONE solve per trajectory of the members' stacked states: its adaptive steps, while loop
    and adjoint are shared, so K members cost about what one does (a `vmap` of K separate
    solves batches K while loops, and costs about K times one)."""
    field = _member_field(static, active, bound)

    def losses(trainables):
        _, y0s = eqx.combine(trainables, static)  # (K, N, D)

        def one(y0, t):  # one trajectory, all members
            return _joint_solve(lambda tt, y: field(trainables, tt, y), y0, t, config)

        pred, ok = jax.vmap(one, in_axes=(1, 0))(y0s, ts)  # (N, T, K, D), (N,)
        pred = jnp.moveaxis(pred, 2, 0)  # (K, N, T, D)
        w = weights[..., None]
        err = jnp.where(w > 0, (pred - ys) / scale, 0.0)
        total = jnp.maximum(jnp.sum(weights, axis=(1, 2)), 1e-12)
        fit = jnp.sum(w * err**2, axis=(1, 2, 3)) / (total * ys.shape[-1])
        safe = jnp.where(jnp.isfinite(pred), pred, ys)

        def network_out(trainable, x):
            ude, _ = eqx.combine(trainable, static)
            return jax.vmap(jax.vmap(ude.network))(x) / ude.network.out_scale

        out = eqx.filter_vmap(network_out)(trainables, safe)
        reg = jnp.sum(w * out**2, axis=(1, 2, 3)) / (total * out.shape[-1])
        return jnp.where(jnp.all(ok), fit + penalty * reg, jnp.inf)

    return losses


def _where_member(good, new, old):
    def pick(a, b):
        return jnp.where(good.reshape(good.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)


@eqx.filter_jit
def _ensemble_ode_chunk(
    trainables, static, opt_states, active, ts, ys, weights, scale, bound, *, optimizer, config, n
):
    """`n` Adam steps through the ODE for every member at once (one joint solve per step); a
    stopped member, or one whose loss is not finite, stays where it was."""
    losses = _ode_losses(static, ts, ys, weights, scale, active, bound, config, config.penalty)

    def total(params):
        values = losses(params)
        return jnp.sum(jnp.where(active, values, 0.0)), values

    def step(carry, _):
        params, state = carry
        (_, values), grads = jax.value_and_grad(total, has_aux=True)(params)
        updates, new_state = eqx.filter_vmap(optimizer.update)(grads, state, params)
        new_params = eqx.apply_updates(params, updates)
        good = active & jnp.isfinite(values)
        return (_where_member(good, new_params, params), _where_member(good, new_state, state)), (
            values
        )

    (trainables, opt_states), values = jax.lax.scan(step, (trainables, opt_states), None, length=n)
    return trainables, opt_states, values.T


@eqx.filter_jit
def _ensemble_losses(trainables, static, active, ts, ys, weights, scale, bound, *, config):
    """Every member's loss without the penalty (the held-back points' loss), one joint solve."""
    return _ode_losses(static, ts, ys, weights, scale, active, bound, config, 0.0)(trainables)


@eqx.filter_jit
def _separate_losses(trainables, static, ts, ys, weights, scale, *, config):
    """Every member's loss from solves of its own (to find a member that fails the joint one)."""

    def one(trainable, weight):
        return _ode_losses(
            static, ts, ys, weight[None], scale, jnp.ones(1, bool), jnp.inf, config, 0.0
        )(jax.tree.map(lambda x: x[None], trainable))[0]

    return eqx.filter_vmap(one)(trainables, weights)


def _collocation_loss(static, t, x, dydt, weight, dscale, penalty: float):
    def loss(trainable):
        ude, _ = eqx.combine(trainable, static)
        w = weight[:, None]
        total = jnp.maximum(jnp.sum(weight), 1e-12)
        err = (jax.vmap(ude)(t, x) - dydt) / dscale
        out = jax.vmap(ude.network)(x) / ude.network.out_scale
        return jnp.sum(w * err**2) / (total * err.shape[-1]) + penalty * jnp.sum(w * out**2) / (
            total * out.shape[-1]
        )

    return loss


def _freeze(active, new, old):
    return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)


@eqx.filter_jit
def _ensemble_collocation_chunk(
    trainables, static, opt_states, active, t, x, dydt, weights, dscale, *, optimizer, config, n
):
    def one(trainable, opt_state, act, weight):
        loss = _collocation_loss(static, t, x, dydt, weight, dscale, config.penalty)
        new, new_state, values = _first_order_steps(loss, trainable, opt_state, optimizer, n)
        return _freeze(act, new, trainable), _freeze(act, new_state, opt_state), values

    return eqx.filter_vmap(one)(trainables, opt_states, active, weights)


@functools.lru_cache(maxsize=8)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    """One optimiser object per learning rate, so that the compiled chunks (which take it as a
    static argument) are reused by every ensemble of the same shapes in this process."""
    return optax.adam(learning_rate)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree, k: int):
    return jax.tree.map(lambda x: x[k], tree)


@dataclasses.dataclass(frozen=True)
class TrainedEnsemble:
    members: tuple[TrainedUDE, ...]
    weights: np.ndarray  # (K, N, M) bootstrap counts of every data point (`data.padded()`)
    steps: int  # optimiser steps run by the compiled program (each on every member)
    failed: np.ndarray  # (K,) bool: members stopped because their own solves failed
    seeds: np.ndarray  # (K,) a seed per member for its later resampling (`half_sample`)

    def __len__(self) -> int:
        return len(self.members)


def train_ensemble(
    fit: MechanisticFit,
    data: TrajectorySet,
    k: int,
    *,
    key: PRNGKeyArray,
    config: UDEConfig = UDEConfig(),
    bootstrap: bool = True,
    smoothed: Smoothed | None = None,
    progress: Callable[[str, int, int, float], None] | None = None,
) -> TrainedEnsemble:
    """Train `k` UDEs together in one compiled program (`eqx.filter_vmap` over members).

    **Arguments:**
    - `fit`, `data`: as for `train_ude`.
    - `k`: the number of members (at least 1).
    - `key`: split into one network initialisation and one bootstrap draw per member.
    - `config`: `train_ude`'s settings; its collocation and Adam phases run (no L-BFGS).
    - `bootstrap`: resample the points per member (False: members differ only by their key).
    - `progress`: called as `progress(phase, step, total, mean loss)` after every chunk.
    """
    if int(k) < 1:
        raise ValueError(f"an ensemble needs at least one member; got {k}")
    k = int(k)
    model = fit.model
    if not model.residual_states:
        raise ValueError("the model declares no [residual] states: nothing to train")
    init_key, boot_key = jax.random.split(key)
    seed = int(np.asarray(jax.random.randint(boot_key, (), 0, 2**31 - 1)))
    ts, ys, mask = data.padded()
    train_mask, val_mask = _validation_split(mask, config.validation_every)
    has_val = bool(val_mask.sum() > 0)
    weights = bootstrap_weights(mask, k, seed=seed, resample=bootstrap)
    ts, ys, scale = jnp.asarray(ts), jnp.asarray(ys), jnp.asarray(data.state_scale())
    mask, val_mask = jnp.asarray(mask), jnp.asarray(val_mask)
    y0s = jnp.asarray(fit.y0)
    if config.collocation_steps:
        smoothed = smoothed if smoothed is not None else smooth(data)
        firsts = [int(np.flatnonzero(smoothed.trajectory == i)[0]) for i in range(len(data))]
        y0s = jnp.asarray(smoothed.y[firsts])
        keep = smoothed.interior if smoothed.interior.sum() >= 2 else np.ones_like(smoothed.t, bool)
        colloc = tuple(jnp.asarray(a[keep]) for a in (smoothed.t, smoothed.y, smoothed.dydt))
        colloc_w = jnp.asarray(
            bootstrap_weights(np.ones(int(keep.sum())), k, seed=seed + 1, resample=bootstrap)
        )
        dscale = jnp.asarray(_derivative_scale(data))

    parts = []
    for member_key in jax.random.split(init_key, k):
        ude = init_ude(
            model, fit.params, data, width=config.width, depth=config.depth, key=member_key
        )
        spec = jax.tree.map(eqx.is_inexact_array, (ude, y0s))
        if not config.train_mechanistic:
            spec = eqx.tree_at(lambda s: s[0].params, spec, False)
        spec = eqx.tree_at(
            lambda s: (s[0].network.in_mean, s[0].network.in_scale, s[0].network.out_scale),
            spec,
            (False, False, False),
        )
        parts.append(eqx.partition((ude, y0s), spec))
    trainables = _stack([p[0] for p in parts])
    static = parts[0][1]  # identical for every member: scales from the data, the model
    optimizer = _adam(config.learning_rate)
    phases = []
    if config.collocation_steps:
        phases.append(("collocation", 1.0, config.collocation_steps))
    phases += [("adam", w, config.adam_steps) for w in config.windows]
    total = sum(n for *_, n in phases)
    history: list[dict[str, list]] = [
        {"collocation": [], "adam": [], "lbfgs": [], "validation": []} for _ in range(k)
    ]
    ode_w = jnp.asarray(weights * train_mask[None])  # held-back points: never trained on
    bound = jnp.asarray(data.blow_up_bound(BLOW_UP))
    failed = np.zeros(k, dtype=bool)
    steps = 0
    for phase, fraction, n_steps in phases:
        opt_states = eqx.filter_vmap(optimizer.init)(trainables)  # fresh moments per phase
        active = ~failed
        best = np.full(k, math.inf)
        bad = np.zeros(k, dtype=int)
        ts_w, in_window = _windowed(ts, mask, fraction)
        for start in range(0, n_steps, config.chunk):
            n = min(config.chunk, n_steps - start)
            if phase == "collocation":
                trainables, opt_states, values = _ensemble_collocation_chunk(
                    trainables,
                    static,
                    opt_states,
                    jnp.asarray(active),
                    *colloc,
                    colloc_w,
                    dscale,
                    optimizer=optimizer,
                    config=config,
                    n=n,
                )
                monitor = np.asarray(values)[:, -1]
            else:
                trainables, opt_states, values = _ensemble_ode_chunk(
                    trainables,
                    static,
                    opt_states,
                    jnp.asarray(active),
                    ts_w,
                    ys,
                    ode_w * in_window[None],
                    scale,
                    bound,
                    optimizer=optimizer,
                    config=config,
                    n=n,
                )
                last = np.asarray(values)[:, -1]
                if not np.all(np.isfinite(last[active])):
                    # The joint solve fails: find the members whose own solves fail, stop them
                    # for good, and go on with the others.
                    own = np.asarray(
                        _separate_losses(
                            trainables,
                            static,
                            ts_w,
                            ys,
                            ode_w * in_window[None],
                            scale,
                            config=config,
                        )
                    )
                    broken = active & ~np.isfinite(own)
                    failed |= broken
                    if not broken.any():
                        active[:] = False  # no single culprit: this phase ends for all
                    active &= ~broken
                monitor = last
                if has_val and active.any():
                    monitor = np.asarray(
                        _ensemble_losses(
                            trainables,
                            static,
                            jnp.asarray(active),
                            ts_w,
                            ys,
                            jnp.broadcast_to(val_mask * in_window, ode_w.shape),
                            scale,
                            bound,
                            config=config,
                        )
                    )
            steps += n
            values = np.asarray(values)
            for m in np.flatnonzero(active):
                history[m][phase].extend(values[m].tolist())
                history[m]["validation"].append(float(monitor[m]))
                if math.isfinite(monitor[m]) and monitor[m] < best[m] * (
                    1 - config.min_improvement
                ):
                    best[m], bad[m] = monitor[m], 0
                else:
                    bad[m] += 1
            active &= bad < config.patience
            if progress is not None:
                progress(
                    f"ensemble of {k}: {phase}", steps, total, float(np.nanmean(values[:, -1]))
                )
            if not active.any():
                break
    members = []
    for m in range(k):
        ude, y0 = eqx.combine(_member(trainables, m), static)
        leaves = jax.tree.leaves(eqx.filter(ude, eqx.is_inexact_array))
        if not all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves):
            raise NumericalError(f"ensemble member {m} has non-finite weights", stage="ensemble")
        members.append(TrainedUDE(ude=ude, y0=np.asarray(y0), history=history[m], config=config))
    seeds = np.random.default_rng(seed + 2).integers(0, 2**31 - 1, size=k)
    return TrainedEnsemble(tuple(members), np.asarray(weights), steps, failed, seeds)


# -- distillation and what the members agree on -------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MemberTerms:
    """One member's distilled model: its kept discovered terms (state, term) -> coefficient, or
    why it has none."""

    terms: dict[tuple[str, str], float]
    equations: dict[str, str]
    error: str | None = None


def member_terms(selection) -> MemberTerms:
    """The kept discovered terms of a `Selection`, each as (state, term with coefficient 1)."""
    terms = {
        (t.state, str(t.form)): t.coefficient
        for t in selection.fitted_terms()
        if t.kept and t.origin == "discovered"
    }
    return MemberTerms(terms, selection.equations())


def distil_members(
    ensemble: TrainedEnsemble,
    data: TrajectorySet,
    *,
    candidates: Callable[[object], pd.DataFrame],
    select: Callable[[pd.DataFrame], object],
    key: PRNGKeyArray,
    n_extra_starts: int = 4,
    smoothed: Smoothed | None = None,
    fit_initial_state: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[MemberTerms]:
    """Every member through the distillation stages: dense samples along its field, the
    engines' candidates (`candidates(dense)`), selection and refit on the data
    (`select(table)`: which terms the member's model keeps); then that model refit to a
    random half of the data of the member's own (`half_sample`), so that the spread of a
    coefficient over members estimates its sampling spread. A member whose distillation fails
    numerically is kept as a failure (it includes no term)."""
    from .distil import dense_samples

    smoothed = smoothed if smoothed is not None else smooth(data)
    out = []
    for m, (trained, member_key) in enumerate(
        zip(ensemble.members, jax.random.split(key, len(ensemble)))
    ):
        try:
            if ensemble.failed[m]:
                raise NumericalError("its training solves failed", stage="ensemble")
            dense = dense_samples(
                trained, data, key=member_key, n_extra_starts=n_extra_starts, smoothed=smoothed
            )
            table = candidates(dense)
            if not len(table):
                raise NumericalError("no candidate formulas", stage="ensemble")
            selection = select(table)
            half = half_sample(data, seed=int(ensemble.seeds[m]))
            out.append(member_terms(refit_to(selection, half, fit_initial_state)))
        except NumericalError as err:
            out.append(MemberTerms({}, {}, str(err)))
        if log is not None:
            log(f"ensemble member {m + 1}/{len(ensemble)}: {out[-1].equations or out[-1].error}")
    return out


def refit_to(selection, data: TrajectorySet, fit_initial_state: bool = True):
    """`selection` (a `Selection`) with its model's constants refit to `data` (same terms)."""
    from .distil import Refitter

    refitter = Refitter(selection.term_model, data, fit_initial_state=fit_initial_state)
    refit = refitter.fit(list(selection.mask), start=selection.refit.params)
    if not refit.ok:
        raise NumericalError("its model cannot be refit to a half of the data", stage="ensemble")
    return dataclasses.replace(selection, refit=refit)


def summarise_ensemble(members: Sequence[MemberTerms], *, level: float = LEVEL) -> dict:
    """For every term any member kept: its inclusion frequency over all members, and the median
    and central `level` interval of its coefficient over the members that include it."""
    k = len(members)
    keys: dict[tuple[str, str], list[float]] = {}
    for member in members:
        for term, value in member.terms.items():
            keys.setdefault(term, []).append(value)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    terms = []
    for (state, term), values in keys.items():
        v = np.asarray(values)
        terms.append(
            {
                "state": state,
                "term": term,
                "frequency": len(v) / k,
                "members": len(v),
                "median": float(np.median(v)),
                "interval": [float(np.percentile(v, lo)), float(np.percentile(v, hi))],
            }
        )
    terms.sort(key=lambda t: (t["state"], -t["frequency"], t["term"]))
    return {
        "members": k,
        "distilled": sum(m.error is None for m in members),
        "failed": [m.error for m in members if m.error is not None],
        "level": level,
        "terms": terms,
        "equations": [m.equations for m in members],
    }


def annotate_terms(terms: list[dict], summary: dict) -> list[dict]:
    """The run's own terms (`discovered.json`'s `terms`) with each discovered term's ensemble
    frequency and interval (frequency 0 where no member kept it)."""
    found = {(t["state"], t["term"]): t for t in summary["terms"]}
    out = []
    for t in terms:
        if t.get("origin") != "discovered":
            out.append(t)
            continue
        e = found.get((t["state"], t["term"]))
        out.append(
            {
                **t,
                "ensemble_frequency": e["frequency"] if e else 0.0,
                "ensemble_interval": e["interval"] if e else None,
            }
        )
    return out


def ensemble_table(summary: dict) -> pd.DataFrame:
    """`ensemble.csv`: one row per term any member kept."""
    cols = ["state", "term", "frequency", "members", "median", "lower", "upper"]
    rows = [
        {**{c: t[c] for c in cols[:5]}, "lower": t["interval"][0], "upper": t["interval"][1]}
        for t in summary["terms"]
    ]
    return pd.DataFrame(rows, columns=cols)
