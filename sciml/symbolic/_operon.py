"""Operon: multi-objective genetic programming (accuracy vs length) via pyoperon, no Julia."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import sympy as sp

from ._base import SymbolicEngine
from ._parse import FormulaParseError, parse_formula
from ._table import candidates_table, feature_symbols

DEFAULT_SYMBOLS = "add,sub,mul,div,exp,log,sin,cos,sqrt,tanh,constant,variable"

OPERON_COLUMNS: tuple[str, ...] = ("operon_length",)


def operon_front_expressions(
    front: list[dict[str, Any]], model: Any, feature_names: list[str]
) -> list[tuple[sp.Expr, dict[str, Any]]]:
    """SymPy expressions of pyoperon's `pareto_front_` entries (with scale and offset folded in).

    pyoperon prints variables under its own names (`X1`, `X2`, ...); they are mapped to the
    features here rather than passed to pyoperon, so that any feature name is safe.
    """
    symbols = feature_symbols(feature_names)
    printed = {name: symbols[i] for i, name in enumerate(model.variables_.values())}
    out = []
    for entry in front:
        text = model.get_model_string(entry["tree"], precision=12)
        try:
            expr = parse_formula(text, printed)
        except FormulaParseError:
            continue
        out.append((expr, {"operon_length": int(entry["length"])}))
    return out


class OperonEngine(SymbolicEngine):
    """Genetic programming with pyoperon's `SymbolicRegressor` (NSGA-II on R² and length).

    Deterministic for a given `random_state`: one thread and a budget in generations and
    evaluations (never wall-clock time). Constants of the front's formulas are rounded to
    `significant_digits` where the loss allows it, and additive terms smaller than `drop_tol`
    times the spread of y (such as the intercept that linear scaling adds) are dropped.
    `options` are passed on to `SymbolicRegressor` and override the settings here.

    Fitted attributes: `equations_` (extra column `operon_length`: pyoperon's own tree length).
    The fitted `SymbolicRegressor` is not kept: its C++ trees do not pickle, and a fitted
    engine must (sklearn's contract; cached and parallel runs pickle results).
    """

    name = "operon"

    def __init__(
        self,
        allowed_symbols: str = DEFAULT_SYMBOLS,
        population_size: int = 500,
        generations: int = 100,
        max_evaluations: int = 100_000,
        max_length: int = 30,
        optimizer_iterations: int = 10,
        significant_digits: int = 4,
        drop_tol: float = 1e-3,
        n_threads: int = 1,
        random_state: int | None = 0,
        options: Mapping[str, Any] | None = None,
    ):
        self.allowed_symbols = allowed_symbols
        self.population_size = population_size
        self.generations = generations
        self.max_evaluations = max_evaluations
        self.max_length = max_length
        self.optimizer_iterations = optimizer_iterations
        self.significant_digits = significant_digits
        self.drop_tol = drop_tol
        self.n_threads = n_threads
        self.random_state = random_state
        self.options = options

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            from pyoperon.sklearn import SymbolicRegressor  # noqa: F401
        except ImportError as err:
            return False, f"pyoperon cannot be imported ({err}); install pyoperon"
        return True, "pyoperon is installed"

    def _fit(self, X: np.ndarray, y: np.ndarray, feature_names: list[str]) -> pd.DataFrame:
        from pyoperon.sklearn import SymbolicRegressor

        settings: dict[str, Any] = {
            "allowed_symbols": self.allowed_symbols,
            "objectives": ["r2", "length"],
            "population_size": self.population_size,
            "generations": self.generations,
            "max_evaluations": self.max_evaluations,
            "max_length": self.max_length,
            "optimizer_iterations": self.optimizer_iterations,
            "n_threads": self.n_threads,
            "random_state": 0 if self.random_state is None else int(self.random_state),
        }
        settings.update(self.options or {})
        regressor = SymbolicRegressor(**settings)
        regressor.fit(X, y)
        front = sorted(regressor.pareto_front_, key=lambda entry: entry["length"])
        candidates = operon_front_expressions(front, regressor, feature_names)
        return candidates_table(
            candidates,
            X,
            y,
            feature_symbols(feature_names),
            significant_digits=self.significant_digits,
            drop_tol=self.drop_tol,
            extra_columns=OPERON_COLUMNS,
        )
