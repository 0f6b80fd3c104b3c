"""The engine interface: sklearn's estimator contract, one table of candidates as the result."""

from __future__ import annotations

import abc
import keyword
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from .._errors import InputError
from ._parse import FUNCTIONS
from ._table import evaluate, feature_symbols, select_model


class EngineUnavailable(RuntimeError):
    """A symbolic engine cannot run here (e.g. PySR without a usable Julia).

    `run_engines` reports these and carries on with the other engines.
    """


def validate_regression_data(
    X: Any, y: Any, feature_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Check and convert (X, y, feature_names); raise `InputError` naming what is wrong."""
    # Writable C-ordered copies: compiled engines (pyoperon) refuse read-only arrays (e.g.
    # from Parquet) and strided views such as M[:, j].
    X = np.array(X, dtype=float, order="C", copy=True)
    y = np.array(y, dtype=float, order="C", copy=True)
    if X.ndim != 2:
        raise InputError(f"X must be a 2-D array (samples, features); got shape {X.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = np.array(y[:, 0], order="C")
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise InputError(f"y must have shape ({X.shape[0]},) to match X; got {y.shape}")
    if X.shape[0] < 2:
        raise InputError(f"need at least 2 samples to fit a formula; got {X.shape[0]}")
    for what, array in (("X", X), ("y", y)):
        bad = np.argwhere(~np.isfinite(array))
        if len(bad):
            raise InputError(f"{what} has a non-finite value at index {tuple(bad[0])}")
    names = [str(name) for name in feature_names]
    if len(names) != X.shape[1]:
        raise InputError(f"got {len(names)} feature names for {X.shape[1]} columns of X")
    if len(set(names)) != len(names):
        raise InputError(f"feature names must be distinct: {names}")
    reserved = set(FUNCTIONS)  # a feature name shadows a constant of the same name
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name) or name in reserved:
            raise InputError(
                f"feature name {name!r} cannot appear in a formula: use an identifier that is "
                "not a function or constant name"
            )
    return X, y, names


class SymbolicEngine(BaseEstimator, abc.ABC):
    """A symbolic-regression engine: `fit(X, y, *, feature_names)` -> `equations_`.

    `__init__` only stores settings; `fit` validates, runs the engine and returns self. After
    fitting:

    - `equations_`: the engine's Pareto front as a candidate table (see `sciml.symbolic`);
    - `feature_names_in_`, `n_features_in_`: what it was fitted on.

    `available()` says, without side effects, whether the engine can run here and why not.
    """

    name: ClassVar[str]

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, description) when the engine can run here, else (False, reason)."""
        return True, f"{cls.name} is installed"

    @abc.abstractmethod
    def _fit(self, X: np.ndarray, y: np.ndarray, feature_names: list[str]) -> pd.DataFrame:
        """Run the engine on validated data and return its Pareto table."""

    def fit(self, X: Any, y: Any, *, feature_names: Sequence[str]) -> Self:
        """Fit on states `X` (n, d) and residual values `y` (n,); columns named `feature_names`."""
        X, y, names = validate_regression_data(X, y, feature_names)
        ok, reason = type(self).available()
        if not ok:
            raise EngineUnavailable(reason)
        self.equations_ = self._fit(X, y, names)
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = X.shape[1]
        return self

    def best_index(self, rule: str = "best") -> int:
        """Row of `equations_` chosen by PySR's model-selection `rule` (see `select_model`)."""
        return int(select_model(self.equations_, rule))

    def predict(self, X: Any, index: int | None = None) -> np.ndarray:
        """Evaluate the candidate in row `index` of `equations_` (default: PySR's "best")."""
        if not hasattr(self, "equations_"):
            raise AttributeError(f"{type(self).__name__} is not fitted yet: call fit first")
        row = self.best_index() if index is None else index
        expr = self.equations_.loc[row, "sympy_format"]
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise InputError(f"X must have shape (n, {self.n_features_in_}); got {X.shape}")
        return evaluate(expr, X, feature_symbols(list(self.feature_names_in_)))
