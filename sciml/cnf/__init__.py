"""Continuous normalising flows (FFJORD-style density estimation).

A CNF carries a standard Gaussian to the data distribution along `dy/dt = f(t, y)`, with `f` a
small time-conditioned network of concat-squash layers. Log-densities come from a backward
solve that integrates the trace of `df/dy` (exact in low dimension, Hutchinson's estimator in
high dimension); samples from a forward solve. Training is maximum likelihood with loose-tolerance
solves and the RNODE kinetic-energy regulariser (optionally the Jacobian Frobenius norm too),
which keeps the dynamics straight and cheap to solve; every reported density is solved at
tight tolerances.

`run_cnf` is the stage: data file in, `metrics.json`, model, samples and plots out.
"""

from ._data import SKLEARN_DATASETS, Table, load_table
from ._eval import evaluate_log_prob
from ._flow import (
    CNF,
    EXACT_TRACE_MAX_DIM,
    RK4,
    ConcatSquashField,
    ConcatSquashLinear,
    Integrals,
    SolveStats,
    gaussian_logpdf,
    integrate_to_base,
    log_prob,
    resolve_trace,
    sample,
)
from ._run import load_cnf, prepare_tables, run_cnf, save_cnf
from ._stats import energy_distance
from ._train import (
    CNFConfig,
    FitResult,
    default_optimiser,
    fit_cnf,
    init_cnf,
    nll_loss,
    validation_rows,
)

__all__ = [
    "CNF",
    "CNFConfig",
    "ConcatSquashField",
    "ConcatSquashLinear",
    "EXACT_TRACE_MAX_DIM",
    "FitResult",
    "Integrals",
    "RK4",
    "SKLEARN_DATASETS",
    "SolveStats",
    "Table",
    "default_optimiser",
    "energy_distance",
    "evaluate_log_prob",
    "fit_cnf",
    "gaussian_logpdf",
    "init_cnf",
    "integrate_to_base",
    "load_cnf",
    "load_table",
    "log_prob",
    "nll_loss",
    "prepare_tables",
    "resolve_trace",
    "run_cnf",
    "sample",
    "save_cnf",
    "validation_rows",
]
