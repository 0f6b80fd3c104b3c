"""The engine interface: sklearn's estimator contract, one table of candidates as the result."""

from __future__ import annotations

import abc
import contextlib
import keyword
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .._errors import InputError
from ._parse import FUNCTIONS
from ._table import evaluate, feature_symbols, select_model


class EngineUnavailable(RuntimeError):
    """A symbolic engine cannot run here (e.g. PySR without a usable Julia).

    `run_engines` reports these and carries on with the other engines.
    """


def default_feature_names(n: int) -> list[str]:
    """`x0, x1, ...`: the names formulas use when the features have none (as PySR's)."""
    return [f"x{i}" for i in range(n)]


def validate_regression_data(
    X: Any, y: Any, feature_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Check and convert (X, y, feature_names); raise `InputError` naming what is wrong.

    Without `feature_names` the features are named by a DataFrame's columns, else `x0, x1, ...`.
    """
    if feature_names is None:
        columns = getattr(X, "columns", None)
        if columns is not None and all(isinstance(c, str) for c in columns):
            feature_names = list(columns)
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
            raise InputError(f"{what} has a non-finite value (NaN or inf) at index {tuple(bad[0])}")
    if feature_names is None:
        feature_names = default_feature_names(X.shape[1])
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


@contextlib.contextmanager
def _as_input_error() -> Iterator[None]:
    """sklearn's `ValueError`s about the data as `InputError` (bad input), message kept."""
    try:
        yield
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from None


class SymbolicEngine(RegressorMixin, BaseEstimator, abc.ABC):
    """A symbolic-regression engine: `fit(X, y)` -> `equations_`, a scikit-learn regressor.

    `__init__` only stores settings; `fit` validates, runs the engine and returns self, so
    `clone`, pipelines and `cross_val_score` work (`score` is R²). Features are named by
    `feature_names=` when given, else by a DataFrame's columns, else `x0, x1, ...`. After
    fitting:

    - `equations_`: the engine's Pareto front as a candidate table (see `sciml.symbolic`);
    - `variable_names_`: the names the formulas use; `n_features_in_`; `feature_names_in_`
      when X was a DataFrame (sklearn's convention).

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

    def fit(self, X: Any, y: Any, *, feature_names: Sequence[str] | None = None) -> Self:
        """Fit on states `X` (n, d) and residual values `y` (n,); see the class for the names."""
        # sklearn's checks first (sparse, complex, empty, 1-D, NaN: its usual errors), then
        # the formula's own (names a formula can use).
        columns = getattr(X, "columns", None)  # validate_data keeps them in feature_names_in_
        with _as_input_error():
            X, y = validate_data(self, X, y, y_numeric=True, ensure_min_samples=2, dtype=np.float64)
        if feature_names is None and hasattr(self, "feature_names_in_"):
            feature_names = list(columns)
        X, y, names = validate_regression_data(X, y, feature_names)
        ok, reason = type(self).available()
        if not ok:
            raise EngineUnavailable(reason)
        self.equations_ = self._fit(X, y, names)
        self.variable_names_ = list(names)
        return self

    def best_index(self, rule: str = "best") -> int:
        """Row of `equations_` chosen by PySR's model-selection `rule` (see `select_model`)."""
        check_is_fitted(self, "equations_")
        return int(select_model(self.equations_, rule))

    def predict(self, X: Any, index: int | None = None) -> np.ndarray:
        """Evaluate the candidate in row `index` of `equations_` (default: PySR's "best")."""
        check_is_fitted(self, "equations_")
        row = self.best_index() if index is None else index
        expr = self.equations_.loc[row, "sympy_format"]
        with _as_input_error():
            X = validate_data(self, X, reset=False, dtype=np.float64)
        return evaluate(expr, X, feature_symbols(self.variable_names_))
