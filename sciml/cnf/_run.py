"""The CNF stage end to end: load, split, train (resumably), evaluate, sample, plot, save."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._errors import InputError, NumericalError
from .._io import atomic_path, write_json
from ._data import Table, align_columns, check_rows, load_table
from ._eval import EVAL_BATCH, evaluate_log_prob
from ._flow import ACTIVATIONS, CNF, ConcatSquashField, resolve_trace, sample
from ._train import CNFConfig, fit_cnf, n_validation, remove_checkpoint

#: Fewest training rows (and smallest batch) accepted.
MIN_BATCH = 32
#: Fraction of DATA held out when no TEST file is given.
TEST_FRACTION = 0.2
#: Up to this dimension the reported test NLL uses the exact trace (deterministic, unbiased).
EVAL_EXACT_MAX_DIM = 64


def _split(table: Table, seed: int) -> tuple[Table, Table]:
    n = len(table)
    n_test = max(1, int(round(TEST_FRACTION * n)))
    perm = np.random.default_rng(seed).permutation(n)
    test_rows, train_rows = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    src = table.source
    return (
        Table(table.values[train_rows], table.columns, src),
        Table(table.values[test_rows], table.columns, f"{src} (held-out {TEST_FRACTION:.0%})"),
    )


def prepare_tables(
    data: str | os.PathLike[str], test: str | os.PathLike[str] | None = None, *, seed: int = 0
) -> tuple[Table, Table]:
    """Load and validate DATA (and TEST): the `(train, held-out)` tables `run_cnf` uses.

    Cheap (no JAX work): a command line can call it to fail fast before starting anything.
    **Raises** `DataError` naming the file, column and row.
    """
    table = load_table(data)
    if test is not None:
        train, held = table, align_columns(table, load_table(test))
    else:
        check_rows(table, MIN_BATCH + 1, f"(a batch of {MIN_BATCH} plus a held-out split)")
        train, held = _split(table, seed)
    check_rows(train, MIN_BATCH, f"for training (one batch is at least {MIN_BATCH} rows)")
    return train, held


def save_cnf(folder: str | os.PathLike[str], model: CNF, config: CNFConfig, columns) -> None:
    """`model.eqx` (leaves) and `model.json` (what is needed to rebuild the skeleton)."""
    folder = Path(folder)
    with atomic_path(folder / "model.eqx") as tmp:
        eqx.tree_serialise_leaves(tmp, model)
    hyper = {
        "dim": model.dim,
        "width": config.width,
        "depth": config.depth,
        "t1": model.t1,
        "dtype": "float32",
        "columns": list(columns),
        "config": config.to_dict(),
    }
    write_json(folder / "model.json", hyper)


def load_cnf(folder: str | os.PathLike[str]) -> CNF:
    """Reload a CNF saved by `save_cnf` / `run_cnf` from `folder`."""
    folder = Path(folder)
    hyper = json.loads((folder / "model.json").read_text())
    d = int(hyper["dim"])
    # Model files from before the activation was a setting were all trained with tanh.
    activation = ACTIVATIONS[hyper.get("config", {}).get("activation", "tanh")]
    field = ConcatSquashField(
        d, hyper["width"], hyper["depth"], activation=activation, key=jr.key(0)
    )
    like = CNF(field, jnp.zeros(d, jnp.float32), jnp.ones(d, jnp.float32), float(hyper["t1"]))
    return eqx.tree_deserialise_leaves(folder / "model.eqx", like)


def _write_csv(path: Path, values: np.ndarray, columns) -> None:
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(values, columns=list(columns)).to_csv(tmp, index=False, float_format="%.6g")


def run_cnf(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    test: str | os.PathLike[str] | None = None,
    seed: int = 0,
    steps: int | None = None,
    config: CNFConfig | None = None,
    n_samples: int = 2000,
    plots: bool = True,
    callback: Callable[[int, dict[str, float], CNF], None] | None = None,
    progress: bool | None = None,
    time_limit: float | None = None,
) -> dict[str, Any]:
    """Fit a CNF to DATA and write its evaluation into `out`.

    **Arguments:**
    - `data`: CSV/Parquet with numeric columns, an NPZ with one array, or `"sklearn:NAME"`
      (`iris`, `wine`, `breast_cancer`, `diabetes`: bundled with scikit-learn, no download).
    - `out`: output folder (created).
    - `test`: held-out table with the same columns; default: 20% of DATA split off by `seed`.
    - `seed`: initialisation, split, batches and noise.
    - `steps`: the most training steps (overrides `config.steps`); training stops earlier once
      the NLL of a validation share of DATA's training rows stops improving (see `fit_cnf`).
    - `config`: hyperparameters (`CNFConfig`); `batch_size` is capped at the rows trained on.
    - `n_samples`: rows of `samples.csv`; `plots`: write PNG plots.
    - `callback(step, record, model)`: called every `config.checkpoint_every` steps; it may
      raise to stop (the checkpoint in `out` is resumed by the next call with the same
      arguments).
    - `progress`: a progress bar on stderr (default: when stderr is a terminal).
    - `time_limit`: seconds of training after which the best check so far is kept.

    **Writes** `metrics.json`, `model.eqx` + `model.json`, `samples.csv`, `history.csv` (the
    loss curves: training loss and NLL, validation NLL, learning rate per check),
    `training.png` and `density.png` + `samples.png` (2-D) or `pairs.png` (more dimensions).
    A checkpoint (`checkpoint.eqx`/`.json`) exists only while training is unfinished.

    **Returns** the metrics: `test_nll` (nats per sample, data units), its standard error,
    `train_nll`, `train_seconds`, `eval_solver_steps` (mean steps per evaluation solve), ...

    **Raises** `DataError` for bad data (the message names file, column and row).
    """
    config = config if config is not None else CNFConfig()
    if steps is not None:
        if steps < 1:
            raise InputError(f"--steps must be a positive integer, not {steps}")
        config = dataclasses.replace(config, steps=int(steps))
    train, held = prepare_tables(data, test, seed=seed)
    n_fit = len(train) - n_validation(len(train), config.validation_fraction)
    config = dataclasses.replace(config, batch_size=min(config.batch_size, n_fit))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # `metrics.json` is written last and marks a complete run: a stale one must not vouch for
    # the files this run is about to replace.
    (out / "metrics.json").unlink(missing_ok=True)
    fit = fit_cnf(
        train.values,
        config,
        key=jr.key(seed),
        seed=seed,
        checkpoint_dir=out,
        callback=callback,
        progress=progress,
        time_limit=time_limit,
    )
    model = fit.model

    eval_trace = "exact" if model.dim <= EVAL_EXACT_MAX_DIM else "hutchinson"
    eval_key = jr.fold_in(jr.key(seed), 1)
    test_lp, eval_steps = evaluate_log_prob(model, held.values, trace=eval_trace, key=eval_key)
    sub = train.values[: min(len(train), EVAL_BATCH)]
    train_lp, _ = evaluate_log_prob(model, sub, trace=eval_trace, key=eval_key)
    x_samples, sample_stats = sample(model, n_samples, key=jr.fold_in(jr.key(seed), 2))
    if not bool(sample_stats.ok):
        raise NumericalError("sampling solve failed (step limit or divergence)", stage="cnf")
    x_samples = np.asarray(x_samples, dtype=np.float64)

    _write_csv(out / "samples.csv", x_samples, train.columns)
    keys = ("step", "loss", "nll", "val_nll", "lr", "solver_steps", "seconds")
    rows = [[np.nan if r.get(k) is None else r[k] for k in keys] for r in fit.history]
    _write_csv(
        out / "history.csv",
        np.array(rows, dtype=np.float64).reshape(-1, len(keys)),
        ["step", "loss", "nll", "val_nll", "lr", "solver_steps", "seconds"],
    )
    save_cnf(out, model, config, train.columns)
    if plots:
        from ._plots import plot_density_2d, plot_pairs, plot_training

        plot_training(out / "training.png", fit.history, fit.best_step)
        if model.dim == 2:
            plot_density_2d(out, model, train.values, held.values, x_samples, train.columns)
        else:
            plot_pairs(out / "pairs.png", held.values, x_samples, train.columns)

    test_nll = -test_lp
    metrics: dict[str, Any] = {
        "test_nll": float(np.mean(test_nll)),
        "test_nll_se": float(np.std(test_nll, ddof=1) / np.sqrt(len(test_nll)))
        if len(test_nll) > 1
        else None,
        "train_nll": float(-np.mean(train_lp)),
        "train_seconds": fit.train_seconds,
        "eval_solver_steps": eval_steps,
        "train_solver_steps": float(np.mean([r["solver_steps"] for r in fit.history[-3:]])),
        "sample_solver_steps": int(sample_stats.num_steps),
        "eval_trace": eval_trace,
        "train_trace": resolve_trace(config.trace, model.dim),
        "steps": fit.steps,
        "max_steps": config.steps,
        "best_step": fit.best_step,
        "stopped": fit.stopped,
        "validation_nll": fit.best_validation_nll if fit.n_validation else None,
        "n_validation": fit.n_validation,
        "resumed_from_step": fit.resumed_from,
        "n_train": len(train),
        "n_test": len(held),
        "dim": model.dim,
        "columns": list(train.columns),
        "data": str(data),
        "test": str(test) if test is not None else None,
        "seed": seed,
        "config": config.to_dict(),
    }
    write_json(out / "metrics.json", metrics)
    remove_checkpoint(out)
    return metrics
