"""Maximum-likelihood training of a CNF, with RNODE regularisation and resumable checkpoints.

Many optimiser steps are compiled into one `lax.scan` (a "chunk"); a checkpoint is written
between chunks. Every batch is derived from `(seed, step)` alone, so a run resumed from a
checkpoint computes exactly what the uninterrupted run would have computed.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._checkpoint import Checkpoint, remove
from .._config import Config
from .._errors import NumericalError
from .._fingerprint import Fingerprint
from .._progress import Progress
from ._eval import evaluate_log_prob
from ._flow import (
    ACTIVATIONS,
    CNF,
    ConcatSquashField,
    gaussian_logpdf,
    integrate_to_base,
    resolve_trace,
)

#: The training checkpoint in the output folder: `checkpoint.eqx` (+ `.json` for people).
CHECKPOINT = "checkpoint"
#: A validation NLL must beat the best so far by this much (nats) to count as progress.
MIN_IMPROVEMENT = 1e-3
#: At most this many rows are held back for validation (a check costs one solve per 1024).
MAX_VALIDATION_ROWS = 2048
#: The learning rate is never halved below `learning_rate / MIN_LR_DIVISOR`.
MIN_LR_DIVISOR = 64


@dataclasses.dataclass(frozen=True)
class CNFConfig(Config):
    """Hyperparameters of a CNF and its training; everything a resume must agree on.

    - `width`, `depth`: hidden units and hidden layers of the concat-squash vector field;
      `activation`: its nonlinearity, one of `ACTIVATIONS` (smooth, for the adaptive solver).
    - `t1`: the flow runs on `[0, t1]`.
    - `steps`: the most optimiser steps. Training stops earlier once the validation NLL has not
      improved (by `MIN_IMPROVEMENT` nats) for `patience` checks, one check every
      `checkpoint_every` steps; the parameters of the best check are kept.
    - `validation_fraction`: share of the training rows held back for those checks (at most
      `MAX_VALIDATION_ROWS`); 0: no validation, train for exactly `steps` and keep the last.
    - `ema`: decay of the exponential moving average of the parameters that is validated and
      returned (0: the raw parameters); it removes most of the step-to-step noise of the NLL.
    - `batch_size`, `learning_rate`: clipped Adam at `learning_rate` after a linear warm-up;
      the rate is halved whenever the validation NLL has not improved for `patience // 2`
      checks (down to `learning_rate / 64`), and training stops only once it has not improved
      for `patience` checks with the rate at that floor. No schedule length to tune: the data
      decide.
    - `trace`: `"auto"` (exact up to 8 dimensions, else Hutchinson), `"exact"`, `"hutchinson"`.
    - `kinetic`, `jacobian`: RNODE weights of `int |f|^2 dt` and `int |df/dy|_F^2 dt` (0: off).
      The default kinetic weight keeps the learnt paths straight and cheap to solve.
    - `rtol`, `atol`: tolerances of the training solves (adaptive `Tsit5`). Loose by default:
      few steps per solve, and the error control bounds how far the training NLL can differ
      from the exact one. Validation, test NLL and sampling always solve at 1e-5.
    - `dt`: fixed step size of the training solves instead (classical `RK4`, `t1 / dt`
      steps); None (default): adaptive. Fixed steps have no error control, and a flow can
      learn to exploit their error (training NLL far below the true one while the accurate
      NLL rises); measured on the 4x4 grid with 8 steps.
    - `max_steps`: solver step limit per training solve; `checkpoint_every`: steps per chunk.
    """

    width: int = 64
    depth: int = 4
    activation: str = "silu"
    t1: float = 1.0
    steps: int = 20000
    batch_size: int = 128
    learning_rate: float = 1e-2
    patience: int = 10
    validation_fraction: float = 0.1
    ema: float = 0.99
    trace: str = "auto"
    kinetic: float = 0.05
    jacobian: float = 0.0
    rtol: float = 1e-3
    atol: float = 1e-3
    dt: float | None = None
    max_steps: int = 1000
    checkpoint_every: int = 100

    def problems(self) -> list[str]:
        problems = [
            f"{name} must be at least 1"
            for name in ("width", "depth", "steps", "batch_size", "patience", "checkpoint_every")
            if int(getattr(self, name)) < 1
        ]
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {', '.join(ACTIVATIONS)}")
        if not 0 <= self.ema < 1:
            problems.append("ema must lie in [0, 1)")
        if not 0 <= self.validation_fraction < 1:
            problems.append("validation_fraction must lie in [0, 1)")
        if not self.learning_rate > 0:
            problems.append("learning_rate must be positive")
        if self.dt is not None and not 0 < self.dt <= self.t1:
            problems.append(f"dt must lie in (0, t1 = {self.t1}] or be None (adaptive)")
        elif self.dt is not None and self.t1 / self.dt > self.max_steps:
            problems.append(f"t1 / dt = {self.t1 / self.dt:g} steps exceed max_steps")
        if self.kinetic < 0 or self.jacobian < 0:
            problems.append("kinetic and jacobian weights must be non-negative")
        return problems


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The static (compile-time) part of a training step."""

    t1: float
    trace: str
    kinetic: float
    jacobian: float
    rtol: float
    atol: float
    dt: float | None
    max_steps: int
    batch_size: int
    ema: float


@functools.lru_cache(maxsize=16)
def default_optimiser(config: CNFConfig) -> optax.GradientTransformation:
    """Clipped Adam with a linear warm-up to `config.learning_rate`, then constant.

    The rate is a hyperparameter in the optimiser state (`optax.inject_hyperparams`), so that
    `fit_cnf` can halve it on a validation plateau. Cached: the same config gives the same
    object, so the compiled training chunk is reused across runs in one process.
    """
    warmup = max(1, min(100, config.steps // 10))
    ramp = optax.linear_schedule(0.1, 1.0, warmup)
    return optax.chain(
        optax.clip_by_global_norm(5.0),
        optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate),
        optax.scale_by_schedule(ramp),
    )


def _get_lr(opt_state) -> float | None:
    try:
        return float(optax.tree_utils.tree_get(opt_state, "learning_rate"))
    except (KeyError, ValueError, TypeError):
        return None


def _set_lr(opt_state, value: float):
    old = optax.tree_utils.tree_get(opt_state, "learning_rate")
    return optax.tree_utils.tree_set(opt_state, learning_rate=jnp.asarray(value, old.dtype))


def n_validation(n: int, fraction: float) -> int:
    """How many of `n` training rows are held back for validation."""
    if fraction <= 0:
        return 0
    return int(min(MAX_VALIDATION_ROWS, max(1, round(fraction * n))))


def validation_rows(n: int, fraction: float, key: PRNGKeyArray) -> tuple[np.ndarray, np.ndarray]:
    """`(fit rows, validation rows)` of `n` training rows: a permutation fixed by `key`."""
    n_val = n_validation(n, fraction)
    if n_val == 0:
        return np.arange(n), np.arange(0)
    perm = np.asarray(jr.permutation(key, n))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def init_cnf(x: np.ndarray, config: CNFConfig, *, key: PRNGKeyArray) -> CNF:
    """A fresh CNF whose standardisation is fixed by the training data `x` (float32)."""
    x = np.asarray(x, dtype=np.float64)
    field = ConcatSquashField(
        x.shape[1],
        config.width,
        config.depth,
        activation=ACTIVATIONS[config.activation],
        dtype=jnp.float32,
        key=key,
    )
    shift = jnp.asarray(x.mean(axis=0), jnp.float32)
    scale = jnp.asarray(x.std(axis=0), jnp.float32)
    return CNF(field, shift, scale, float(config.t1))


def nll_loss(
    field: ConcatSquashField,
    x: Float[Array, "b d"],
    *,
    key: PRNGKeyArray,
    settings: _Settings,
    solver: diffrax.AbstractSolver | None,
    adjoint: diffrax.AbstractAdjoint | None,
) -> tuple[Float[Array, ""], tuple[Array, Array, Array]]:
    """Mean NLL (standardised units) plus the RNODE terms; aux: (NLL, solver steps, ok)."""
    out, stats = integrate_to_base(
        field,
        x,
        settings.t1,
        trace=settings.trace,  # type: ignore[arg-type]
        key=key,
        solver=solver,
        adjoint=adjoint,
        rtol=settings.rtol,
        atol=settings.atol,
        dt=settings.dt,
        max_steps=settings.max_steps,
    )
    nll = -jnp.mean(gaussian_logpdf(out.z) + out.delta_logp)
    loss = nll
    if settings.kinetic:
        loss = loss + settings.kinetic * jnp.mean(out.kinetic)
    if settings.jacobian:
        loss = loss + settings.jacobian * jnp.mean(out.frobenius)
    return loss, (nll, stats.num_steps, stats.ok)


def batch_indices(key: PRNGKeyArray, step: Int[Array, ""], n: int, size: int) -> Int[Array, " b"]:
    """The rows of step `step`'s batch: a function of `(key, step)` only."""
    return jr.randint(jr.fold_in(key, step), (size,), 0, n)


@eqx.filter_jit
def _train_chunk(
    params,
    ema,
    static,
    opt_state,
    data: Float[Array, "n d"],
    key: PRNGKeyArray,
    steps: Int[Array, " k"],
    total: Int[Array, ""],
    optim: optax.GradientTransformation,
    settings: _Settings,
    solver,
    adjoint,
):
    data_key, noise_key = jr.split(key)
    grad_fn = eqx.filter_value_and_grad(
        lambda p, x, k: nll_loss(
            eqx.combine(p, static), x, key=k, settings=settings, solver=solver, adjoint=adjoint
        ),
        has_aux=True,
    )

    def body(carry, step):
        params, opt_state, ema = carry
        idx = batch_indices(data_key, step, data.shape[0], settings.batch_size)
        (loss, (nll, nsteps, ok)), grads = grad_fn(params, data[idx], jr.fold_in(noise_key, step))
        updates, new_state = optim.update(grads, opt_state, params)
        new_params = eqx.apply_updates(params, updates)
        # The average warms up (decay (1 + step) / (10 + step) early on) so that it does not
        # drag the initial parameters along.
        decay = jnp.minimum(settings.ema, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
        new_ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, new_params)
        # Steps past `total` pad the last chunk (one compilation for every chunk): no-ops.
        keep = step < total
        params, opt_state, ema = jax.tree.map(
            lambda new, old: jnp.where(keep, new, old),
            (new_params, new_state, new_ema),
            (params, opt_state, ema),
        )
        return (params, opt_state, ema), (loss, nll, nsteps, ok | ~keep)

    (params, opt_state, ema), (loss, nll, nsteps, ok) = jax.lax.scan(
        body, (params, opt_state, ema), steps
    )
    return params, ema, opt_state, loss, nll, nsteps, ok


@dataclasses.dataclass
class FitResult:
    """A trained CNF (the best validation check's parameters) and how its training went.

    `history` holds one record per chunk: mean training loss and NLL, the validation NLL
    (data units; NaN without validation), learning rate, solver steps and seconds so far.
    `stopped` is `"converged"` (validation stopped improving), `"step limit"` or
    `"time limit"`.
    """

    model: CNF
    history: list[dict[str, float]]
    train_seconds: float
    resumed_from: int
    steps: int
    best_step: int
    best_validation_nll: float
    stopped: str
    n_validation: int


def fingerprint(
    config: CNFConfig, data: np.ndarray, seed: int, solver=None, adjoint=None, optim=None
) -> str:
    """A hash of everything a checkpoint must agree on to be resumed."""
    fp = Fingerprint().json(config.to_dict()).array(data, np.float32)
    fp.text(f"seed={seed};solver={solver!r};adjoint={adjoint!r};")
    return fp.text("optim=default" if optim is None else "optim=custom").hexdigest()


def remove_checkpoint(folder: str | Path) -> None:
    """Remove the training checkpoint in `folder`, if any."""
    remove(Path(folder) / CHECKPOINT)


def fit_cnf(
    x: np.ndarray,
    config: CNFConfig = CNFConfig(),
    *,
    key: PRNGKeyArray,
    seed: int | None = None,
    optim: optax.GradientTransformation | None = None,
    solver: diffrax.AbstractSolver | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    checkpoint_dir: str | Path | None = None,
    callback: Callable[[int, dict[str, float], CNF], None] | None = None,
    progress: bool | None = None,
    time_limit: float | None = None,
) -> FitResult:
    """Fit a CNF to the rows of `x` (N, D) by maximum likelihood, until it converges.

    A share `config.validation_fraction` of the rows is held back; every
    `config.checkpoint_every` steps its NLL is computed (exact trace up to 64 dimensions,
    adaptive solve). The learning rate is halved after `patience // 2` checks without
    improvement (down to `learning_rate / MIN_LR_DIVISOR`), training stops after `patience`
    such checks at that floor or after `config.steps` steps, and the
    parameters of the best check are returned.

    **Arguments:**
    - `config`: hyperparameters (see `CNFConfig`).
    - `key`: validation split, initialisation, batches and Hutchinson noise derive from it.
    - `seed`: recorded in the checkpoint fingerprint (the integer `key` came from).
    - `optim`: an `optax.GradientTransformation` (default: `default_optimiser(config)`); the
      plateau halving acts on a `learning_rate` hyperparameter if it has one
      (`optax.inject_hyperparams`), otherwise the rate is left alone.
    - `solver`, `adjoint`: diffrax solver of the training solves (default: `RK4` with fixed
      steps `config.dt`, or `Tsit5` when `config.dt` is None) and adjoint (default
      `RecursiveCheckpointAdjoint`, i.e. discretise-then-optimise).
    - `checkpoint_dir`: write the checkpoint `checkpoint.eqx` there every `checkpoint_every`
      steps (`sciml._checkpoint`) and resume from one with the same fingerprint (config,
      data, seed, solver, adjoint). A custom `optim` is not fingerprinted: resume with the
      same one.
    - `callback(step, record, model)`: called after each chunk (record: loss, nll, val_nll,
      lr, solver steps; model: the CNF so far, averaged parameters); it may raise to stop
      training (the last checkpoint stays).
    - `progress`: a progress bar on stderr (default: when stderr is a terminal).
    - `time_limit`: stop (keeping the best check) once training has taken this many seconds
      (`stopped` is then `"time limit"`); for benchmarks on a budget.

    **Raises** `NumericalError` when the loss becomes non-finite or a solve fails.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    split_key, init_key, train_key = jr.split(key, 3)
    fit_rows, val_rows = validation_rows(n, config.validation_fraction, split_key)
    x_fit, x_val = x[fit_rows], x[val_rows]
    if config.batch_size > len(x_fit):
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {len(x_fit)} training rows left after "
            f"holding back {len(x_val)} for validation"
        )
    method = resolve_trace(config.trace, d)
    settings = _Settings(
        t1=float(config.t1),
        trace=method,
        kinetic=float(config.kinetic),
        jacobian=float(config.jacobian),
        rtol=float(config.rtol),
        atol=float(config.atol),
        dt=None if config.dt is None else float(config.dt),
        max_steps=int(config.max_steps),
        batch_size=int(config.batch_size),
        ema=float(config.ema),
    )
    model = init_cnf(x_fit, config, key=init_key)
    data = model.standardise(jnp.asarray(x_fit, jnp.float32))
    params, static = eqx.partition(model.field, eqx.is_inexact_array)
    fp = fingerprint(config, x, -1 if seed is None else seed, solver, adjoint, optim)
    optim = default_optimiser(config) if optim is None else optim
    opt_state = optim.init(params)
    log_scale = float(model.log_scale())
    val_trace = "exact" if d <= 64 else "hutchinson"
    val_key = jr.fold_in(split_key, 1)

    def with_params(p) -> CNF:
        return eqx.tree_at(lambda m: m.field, model, eqx.combine(p, static))

    best = ema = params
    state = {"best_val": float("inf"), "best_step": 0, "bad": 0, "since_change": 0}
    start, history, elapsed = 0, [], 0.0
    ckpt = None if checkpoint_dir is None else Checkpoint(Path(checkpoint_dir) / CHECKPOINT, fp)
    loaded = None if ckpt is None else ckpt.load((params, params, opt_state, params))
    if loaded is not None:
        meta, (params, ema, opt_state, best) = loaded
        start, history, elapsed = int(meta["step"]), list(meta["history"]), meta["seconds"]
        state = {k: meta[k] for k in state}
    resumed_from = start
    lr_floor = config.learning_rate / MIN_LR_DIVISOR
    patience, plateau = int(config.patience), max(1, int(config.patience) // 2)
    stopped = "step limit"

    def converged() -> bool:
        # No improvement for `patience` checks, and the rate already at its floor (a plateau
        # at a higher rate halves it instead: a noisy rate is not convergence).
        lr = _get_lr(opt_state)
        return state["bad"] >= patience and (lr is None or lr <= lr_floor * (1 + 1e-6))

    chunk = max(1, int(config.checkpoint_every))
    with Progress("CNF", total=config.steps, completed=start, enabled=progress) as bar:
        while start < config.steps and not converged():
            if time_limit is not None and elapsed >= time_limit:
                stopped = "time limit"
                break
            stop = min(start + chunk, config.steps)
            tic = time.perf_counter()
            params, ema, opt_state, loss, nll, nsteps, ok = _train_chunk(
                params,
                ema,
                static,
                opt_state,
                data,
                train_key,
                jnp.arange(start, start + chunk),
                jnp.asarray(config.steps),
                optim,
                settings,
                solver,
                adjoint,
            )
            loss, nll, nsteps, ok = (np.asarray(a)[: stop - start] for a in (loss, nll, nsteps, ok))
            if not (np.all(np.isfinite(loss)) and bool(np.all(ok))):
                bad = start + int(np.argmax(~np.isfinite(loss) | ~ok))
                raise NumericalError(
                    f"training step {bad}: non-finite loss or failed solve (step limit "
                    f"{config.max_steps}); try a smaller learning rate or more max_steps",
                    stage="cnf",
                )
            lr = _get_lr(opt_state)
            val_nll = float("nan")
            if len(x_val):
                lp, _ = evaluate_log_prob(with_params(ema), x_val, trace=val_trace, key=val_key)
                val_nll = -float(np.mean(lp))
                if val_nll < state["best_val"] - MIN_IMPROVEMENT:
                    state["bad"], state["since_change"] = 0, 0
                else:
                    state["bad"] += 1
                    state["since_change"] += 1
                if val_nll < state["best_val"]:
                    best, state["best_val"], state["best_step"] = ema, val_nll, stop
                if (
                    state["since_change"] >= plateau
                    and lr is not None
                    and lr > lr_floor * (1 + 1e-6)
                ):
                    opt_state = _set_lr(opt_state, max(lr / 2, lr_floor))
                    state["since_change"] = 0
            else:
                best, state["best_step"] = ema, stop
            elapsed += time.perf_counter() - tic
            record = {
                "step": stop,
                "loss": float(loss.mean()),
                "nll": float(np.mean(nll)) + log_scale,  # data units, as val_nll
                "val_nll": val_nll,
                "lr": float("nan") if lr is None else lr,
                "solver_steps": float(np.mean(nsteps)),
                "seconds": elapsed,
            }
            history.append(record)
            start = stop
            done = converged()
            if done:
                stopped = "converged"
            if ckpt is not None and start < config.steps and not done:
                meta = {"step": start, "history": history, "seconds": elapsed, **state}
                ckpt.save(meta, (params, ema, opt_state, best))
            bar.update(
                start,
                note=f"loss {record['loss']:.3f}  steps/solve {record['solver_steps']:.0f}",
            )
            if callback is not None:
                callback(start, record, with_params(ema))

    return FitResult(
        model=with_params(best),
        history=history,
        train_seconds=elapsed,
        resumed_from=resumed_from,
        steps=start,
        best_step=int(state["best_step"]),
        best_validation_nll=float(state["best_val"]),
        stopped=stopped,
        n_validation=len(x_val),
    )
