"""Log-densities of many rows in fixed-size batches (few compilations)."""

from __future__ import annotations

import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .._errors import NumericalError
from ._flow import CNF, log_prob, resolve_trace

#: Rows per evaluation solve.
EVAL_BATCH = 1024


def evaluate_log_prob(
    model: CNF,
    x: np.ndarray,
    *,
    trace: str = "auto",
    key=None,
    batch: int = EVAL_BATCH,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> tuple[np.ndarray, float]:
    """Log-density of every row of `x`, in fixed-size batches (one compilation).

    Returns `(logp (N,), mean solver steps per batch solve)`. Raises `NumericalError` if a
    solve fails.
    """
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    # Batch sizes are powers of two up to `batch` (padded by repeating a row): few compilations.
    size = min(batch, 1 << max(0, (n - 1).bit_length()))
    method = resolve_trace(trace, model.dim)
    if method == "hutchinson" and key is None:
        key = jr.key(0)
    out, steps = [], []
    for i, start in enumerate(range(0, n, size)):
        chunk = x[start : start + size]
        pad = size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        k = None if key is None else jr.fold_in(key, i)
        lp, stats = log_prob(model, jnp.asarray(chunk), trace=method, key=k, rtol=rtol, atol=atol)
        if not bool(stats.ok):
            raise NumericalError("log-density solve failed (step limit or divergence)", stage="cnf")
        out.append(np.asarray(lp)[: size - pad])
        steps.append(int(stats.num_steps))
    return np.concatenate(out), float(np.mean(steps))
