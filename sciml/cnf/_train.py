"""Maximum-likelihood training of a CNF, with RNODE regularisation and resumable checkpoints.

Many optimiser steps are compiled into one `lax.scan` (a "chunk"); a checkpoint is written
between chunks. Every batch is derived from `(seed, step)` alone, so a run resumed from a
checkpoint computes exactly what the uninterrupted run would have computed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._errors import NumericalError
from .._io import atomic_path, write_json
from ._flow import CNF, ConcatSquashField, gaussian_logpdf, integrate_to_base, resolve_trace

CHECKPOINT = "checkpoint.eqx"
CHECKPOINT_META = "checkpoint.json"


@dataclasses.dataclass(frozen=True)
class CNFConfig:
    """Hyperparameters of a CNF and its training; everything a resume must agree on.

    - `width`, `depth`: hidden units and hidden layers of the concat-squash vector field.
    - `t1`: the flow runs on `[0, t1]`.
    - `steps`, `batch_size`, `learning_rate`: Adam with warm-up and cosine decay (the default
      optimiser; `fit_cnf` accepts any `optax.GradientTransformation` instead).
    - `trace`: `"auto"` (exact up to 8 dimensions, else Hutchinson), `"exact"`, `"hutchinson"`.
    - `kinetic`, `jacobian`: RNODE weights of `int |f|^2 dt` and `int |df/dy|_F^2 dt` (0: off).
    - `rtol`, `atol`: adaptive solver tolerances; `dt`: fixed step size for training instead
      (None: adaptive). Evaluation always uses adaptive steps.
    - `max_steps`: solver step limit per training solve; `checkpoint_every`: steps per chunk.
    """

    width: int = 64
    depth: int = 3
    t1: float = 1.0
    steps: int = 1500
    batch_size: int = 256
    learning_rate: float = 3e-3
    trace: str = "auto"
    kinetic: float = 0.0
    jacobian: float = 0.0
    rtol: float = 1e-5
    atol: float = 1e-5
    dt: float | None = None
    max_steps: int = 1000
    checkpoint_every: int = 100

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CNFConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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


@functools.lru_cache(maxsize=16)
def default_optimiser(config: CNFConfig) -> optax.GradientTransformation:
    """Clipped Adam with warm-up and cosine decay (cached: the same config gives the same
    object, so the compiled training chunk is reused across runs in one process)."""
    warmup = max(1, min(100, config.steps // 10))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=config.learning_rate / 10,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(config.steps, warmup + 1),
        end_value=config.learning_rate / 20,
    )
    return optax.chain(optax.clip_by_global_norm(5.0), optax.adam(schedule))


def init_cnf(x: np.ndarray, config: CNFConfig, *, key: PRNGKeyArray) -> CNF:
    """A fresh CNF whose standardisation is fixed by the training data `x` (float32)."""
    x = np.asarray(x, dtype=np.float64)
    field = ConcatSquashField(x.shape[1], config.width, config.depth, dtype=jnp.float32, key=key)
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
        params, opt_state = carry
        idx = batch_indices(data_key, step, data.shape[0], settings.batch_size)
        (loss, (nll, nsteps, ok)), grads = grad_fn(params, data[idx], jr.fold_in(noise_key, step))
        updates, new_state = optim.update(grads, opt_state, params)
        new_params = eqx.apply_updates(params, updates)
        # Steps past `total` pad the last chunk (one compilation for every chunk): no-ops.
        keep = step < total
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(keep, new, old), (new_params, new_state), (params, opt_state)
        )
        return (params, opt_state), (loss, nll, nsteps, ok | ~keep)

    (params, opt_state), (loss, nll, nsteps, ok) = jax.lax.scan(body, (params, opt_state), steps)
    return params, opt_state, loss, nll, nsteps, ok


@dataclasses.dataclass
class FitResult:
    """A trained CNF and how its training went (per-chunk means in `history`)."""

    model: CNF
    history: list[dict[str, float]]
    train_seconds: float
    resumed_from: int
    steps: int


def fingerprint(
    config: CNFConfig, data: np.ndarray, seed: int, solver=None, adjoint=None, optim=None
) -> str:
    """A hash of everything a checkpoint must agree on to be resumed."""
    h = hashlib.sha256()
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(np.ascontiguousarray(data, dtype=np.float32).tobytes())
    h.update(repr(data.shape).encode())
    h.update(f"seed={seed};solver={solver!r};adjoint={adjoint!r};".encode())
    h.update(b"optim=default" if optim is None else b"optim=custom")
    return h.hexdigest()


def _save_checkpoint(folder: Path, params, opt_state, meta: dict[str, Any]) -> None:
    # The step lives inside the leaves file too, so that a crash between the two writes cannot
    # pair new weights with an old step count.
    with atomic_path(folder / CHECKPOINT) as tmp:
        eqx.tree_serialise_leaves(tmp, (params, opt_state, jnp.asarray(meta["step"])))
    write_json(folder / CHECKPOINT_META, meta)


def _load_checkpoint(folder: Path, params, opt_state, fp: str):
    meta_path, leaves_path = folder / CHECKPOINT_META, folder / CHECKPOINT
    if not (meta_path.exists() and leaves_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != fp:
            return None
        like = (params, opt_state, jnp.asarray(0))
        params, opt_state, step = eqx.tree_deserialise_leaves(leaves_path, like)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is ignored, not fatal
        return None
    if int(step) != int(meta["step"]):
        return None
    return params, opt_state, meta


def remove_checkpoint(folder: str | Path) -> None:
    for name in (CHECKPOINT, CHECKPOINT_META):
        (Path(folder) / name).unlink(missing_ok=True)


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]CNF[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}  steps/solve {task.fields[nfe]:.0f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


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
) -> FitResult:
    """Fit a CNF to the rows of `x` (N, D) by maximum likelihood.

    **Arguments:**
    - `config`: hyperparameters (see `CNFConfig`).
    - `key`: initialisation, batches and Hutchinson noise all derive from it.
    - `seed`: recorded in the checkpoint fingerprint (the integer `key` came from).
    - `optim`: an `optax.GradientTransformation` (default: clipped Adam, warm-up + cosine).
    - `solver`, `adjoint`: diffrax solver (default `Tsit5`) and adjoint (default
      `RecursiveCheckpointAdjoint`, i.e. discretise-then-optimise).
    - `checkpoint_dir`: write `checkpoint.eqx`/`.json` there every `checkpoint_every` steps and
      resume from one with the same fingerprint (config, data, seed, solver, adjoint). A custom
      `optim` is not fingerprinted: resume with the same one.
    - `callback(step, record, model)`: called after each chunk (record: loss, nll, solver
      steps; model: the CNF so far); it may raise to stop training (the last checkpoint stays).
    - `progress`: rich progress bar (default: when stderr is a terminal).

    **Raises** `NumericalError` when the loss becomes non-finite or a solve fails.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if config.batch_size > n:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {n} training rows")
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
    )
    init_key, train_key = jr.split(key)
    model = init_cnf(x, config, key=init_key)
    data = model.standardise(jnp.asarray(x, jnp.float32))
    params, static = eqx.partition(model.field, eqx.is_inexact_array)
    fp = fingerprint(config, x, -1 if seed is None else seed, solver, adjoint, optim)
    optim = default_optimiser(config) if optim is None else optim
    opt_state = optim.init(params)

    start, history, elapsed = 0, [], 0.0
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None:
        loaded = _load_checkpoint(folder, params, opt_state, fp)
        if loaded is not None:
            params, opt_state, meta = loaded
            start, history, elapsed = int(meta["step"]), list(meta["history"]), meta["seconds"]
    resumed_from = start

    if progress is None:
        progress = sys.stderr.isatty()
    chunk = max(1, int(config.checkpoint_every))
    with _progress(progress) as bar:
        task = bar.add_task("train", total=config.steps, completed=start, loss=np.nan, nfe=0)
        while start < config.steps:
            stop = min(start + chunk, config.steps)
            tic = time.perf_counter()
            params, opt_state, loss, nll, nsteps, ok = _train_chunk(
                params,
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
            elapsed += time.perf_counter() - tic
            if not (np.all(np.isfinite(loss)) and bool(np.all(ok))):
                bad = start + int(np.argmax(~np.isfinite(loss) | ~ok))
                raise NumericalError(
                    f"training step {bad}: non-finite loss or failed solve (step limit "
                    f"{config.max_steps}); try a smaller learning rate or more max_steps",
                    stage="cnf",
                )
            record = {
                "step": stop,
                "loss": float(loss.mean()),
                "nll": float(np.mean(nll)),
                "solver_steps": float(np.mean(nsteps)),
                "seconds": elapsed,
            }
            history.append(record)
            start = stop
            if folder is not None and start < config.steps:
                meta = {"step": start, "fingerprint": fp, "history": history, "seconds": elapsed}
                _save_checkpoint(folder, params, opt_state, meta)
            bar.update(task, completed=start, loss=record["loss"], nfe=record["solver_steps"])
            if callback is not None:
                current = eqx.combine(params, static)
                callback(start, record, eqx.tree_at(lambda m: m.field, model, current))

    model = eqx.tree_at(lambda m: m.field, model, eqx.combine(params, static))
    return FitResult(model, history, elapsed, resumed_from, config.steps)
