"""SINDy: sparse regression on a library of candidate terms (PySINDy's libraries and STLSQ)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pysindy as ps
import sympy as sp

from .._errors import InputError
from ._base import SymbolicEngine
from ._parse import FormulaParseError, parse_library_name
from ._table import candidates_table, feature_symbols

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.geomspace(1e-3, 1.0, 31))

SINDY_COLUMNS: tuple[str, ...] = ("terms", "coefficients", "coef_std", "inclusion", "threshold")


def library_terms(library: Any, feature_names: Sequence[str]) -> list[sp.Expr]:
    """SymPy expressions of a fitted PySINDy library's terms, in column order."""
    symbols = dict(zip(feature_names, feature_symbols(feature_names)))
    terms = []
    for name in library.get_feature_names(list(feature_names)):
        try:
            terms.append(parse_library_name(name, symbols))
        except FormulaParseError as err:
            raise InputError(
                f"SINDy library term {name!r} is not a formula in {list(feature_names)}: give "
                "the library function_names that print mathematics, e.g. "
                "lambda x: f'exp({x})'"
            ) from err
    return terms


def stlsq_support(theta: np.ndarray, y: np.ndarray, threshold: float, alpha: float) -> np.ndarray:
    """Boolean support of PySINDy's STLSQ at `threshold` on (already scaled) theta, y."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = ps.STLSQ(threshold=threshold, alpha=alpha, max_iter=50, unbias=False)
        optimizer.fit(theta, y)
    return np.asarray(optimizer.coef_).ravel() != 0


def least_squares(theta: np.ndarray, y: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Least-squares coefficients on the support, zeros elsewhere."""
    coef = np.zeros(theta.shape[1])
    coef[support] = np.linalg.lstsq(theta[:, support], y, rcond=None)[0]
    return coef


def threshold_sweep(
    theta: np.ndarray, y: np.ndarray, thresholds: Sequence[float], alpha: float
) -> list[tuple[np.ndarray, float]]:
    """Distinct non-empty STLSQ supports over `thresholds`, each with a representative threshold.

    Columns of theta and y are scaled to unit root-mean-square first, so a threshold reads as
    "terms contributing less than this fraction of y's size are cut", whatever the units. The
    representative threshold is the geometric middle of the thresholds that gave the support.
    """
    theta_scale = np.sqrt(np.mean(theta**2, axis=0))
    theta_scale[theta_scale == 0] = 1.0
    y_scale = float(np.sqrt(np.mean(y**2))) or 1.0
    theta_s, y_s = theta / theta_scale, y / y_scale
    found: dict[bytes, tuple[np.ndarray, list[float]]] = {}
    for threshold in sorted(thresholds):
        support = stlsq_support(theta_s, y_s, threshold, alpha)
        if support.any():
            found.setdefault(support.tobytes(), (support, []))[1].append(threshold)
    return [(support, float(np.sqrt(ts[0] * ts[-1]))) for support, ts in found.values()]


def forward_path(theta: np.ndarray, y: np.ndarray, max_terms: int) -> list[np.ndarray]:
    """Supports of sizes 1..`max_terms` by greedy forward selection (each step adds the column
    that lowers the least-squares residual most).

    STLSQ's thresholding misses sparse answers when library columns are nearly collinear (a
    conserved total, say S + E + I + R = 1, makes every monomial a combination of others); the
    greedy path still walks through them, and selection decides among its supports.
    """
    scale = np.sqrt(np.mean(theta**2, axis=0))
    usable = scale > 0
    theta_s = np.where(usable, theta / np.where(usable, scale, 1.0), 0.0)
    support = np.zeros(theta.shape[1], dtype=bool)
    path = []
    for _ in range(min(max_terms, int(usable.sum()))):
        best, best_rss = -1, np.inf
        for j in np.flatnonzero(usable & ~support):
            trial = support.copy()
            trial[j] = True
            coef = np.linalg.lstsq(theta_s[:, trial], y, rcond=None)[0]
            rss = float(np.sum((y - theta_s[:, trial] @ coef) ** 2))
            if rss < best_rss:
                best, best_rss = j, rss
        if best < 0:
            break
        support = support.copy()
        support[best] = True
        path.append(support)
    return path


def bootstrap_coefficients(
    theta: np.ndarray,
    y: np.ndarray,
    support: np.ndarray,
    threshold: float,
    alpha: float,
    n_bootstrap: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """Bagging on the support: std of the least-squares coefficients over bootstrap resamples,
    and the fraction of resamples on which STLSQ at `threshold` selects exactly this support
    (NaN for an infinite threshold: a candidate added by hand, not found by the sweep)."""
    n = theta.shape[0]
    theta_scale = np.sqrt(np.mean(theta**2, axis=0))
    theta_scale[theta_scale == 0] = 1.0
    coefs = np.empty((n_bootstrap, theta.shape[1]))
    hits = 0
    for b in range(n_bootstrap):
        rows = rng.integers(0, n, size=n)
        theta_b, y_b = theta[rows], y[rows]
        coefs[b] = least_squares(theta_b, y_b, support)
        y_scale = float(np.sqrt(np.mean(y_b**2))) or 1.0
        if math.isfinite(threshold):
            found = stlsq_support(theta_b / theta_scale, y_b / y_scale, threshold, alpha)
            hits += bool(np.array_equal(found, support))
    std = coefs.std(axis=0, ddof=1) if n_bootstrap > 1 else np.zeros(theta.shape[1])
    inclusion = hits / max(n_bootstrap, 1) if math.isfinite(threshold) else math.nan
    return std, inclusion


class SINDyEngine(SymbolicEngine):
    """Sparse identification on a PySINDy library, with a threshold sweep and bagging.

    The library is a polynomial one of `degree` (with a constant), plus `extra_library` when
    given (any PySINDy feature library, e.g. `ps.CustomLibrary` or `ps.FourierLibrary`, whose
    term names are formulas). STLSQ runs over `thresholds` on unit-scaled columns; each distinct
    sparsity pattern is one candidate, refitted by least squares on its support in the original
    units. `n_bootstrap` resamples of the rows give each coefficient a standard deviation and
    each candidate an inclusion frequency (how often STLSQ picks exactly its terms).

    `greedy_terms` > 0 adds the supports of a greedy forward path of up to that many terms
    (`forward_path`), which reaches sparse answers that thresholding misses on collinear
    libraries.

    Fitted attributes: `equations_` (with extra columns `terms`, `coefficients`, `coef_std`,
    `inclusion`, `threshold`), `library_terms_` (sympy terms, in column order), `coef_` and
    `coef_std_` (arrays (n_candidates, n_terms), rows matching `equations_`), `library_`.
    """

    name = "sindy"

    def __init__(
        self,
        degree: int = 3,
        extra_library: Any = None,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        alpha: float = 1e-6,
        n_bootstrap: int = 10,
        significant_digits: int = 4,
        random_state: int | None = 0,
        greedy_terms: int = 6,
    ):
        self.degree = degree
        self.extra_library = extra_library
        self.thresholds = thresholds
        self.alpha = alpha
        self.n_bootstrap = n_bootstrap
        self.significant_digits = significant_digits
        self.random_state = random_state
        self.greedy_terms = greedy_terms

    def _make_library(self) -> Any:
        library = ps.PolynomialLibrary(degree=self.degree, include_bias=True)
        if self.extra_library is not None:
            library = ps.ConcatLibrary([library, self.extra_library])
        return library

    def _fit(self, X: np.ndarray, y: np.ndarray, feature_names: list[str]) -> pd.DataFrame:
        if int(self.degree) < 1:
            raise InputError(f"SINDy degree must be at least 1; got {self.degree}")
        if self.n_bootstrap < 0:
            raise InputError(f"n_bootstrap must be >= 0; got {self.n_bootstrap}")
        library = self._make_library()
        library.fit(X)
        theta = np.asarray(library.transform(X), dtype=float)
        terms = library_terms(library, feature_names)
        term_names = [str(t) for t in terms]
        rng = np.random.default_rng(self.random_state)
        symbols = feature_symbols(feature_names)

        sweep = threshold_sweep(theta, y, self.thresholds, self.alpha)
        for support in forward_path(theta, y, int(self.greedy_terms)):
            if not any(np.array_equal(support, known) for known, _ in sweep):
                sweep.append((support, math.inf))  # not from the sweep: no inclusion frequency
        bias = [i for i, term in enumerate(terms) if term == 1]
        if bias:  # the constant model heads the front, as in PySR (see candidates_table)
            constant = np.zeros(len(terms), dtype=bool)
            constant[bias[0]] = True
            if not any(np.array_equal(constant, support) for support, _ in sweep):
                sweep.append((constant, math.inf))
        candidates = []
        for support, threshold in sweep:
            coef = least_squares(theta, y, support)
            if self.n_bootstrap > 0:
                std, inclusion = bootstrap_coefficients(
                    theta, y, support, threshold, self.alpha, self.n_bootstrap, rng
                )
            else:
                std, inclusion = np.full(theta.shape[1], np.nan), np.nan
            expr = sp.Add(*(sp.Float(coef[i]) * terms[i] for i in np.flatnonzero(support)))
            extra = {
                "terms": [term_names[i] for i in np.flatnonzero(support)],
                "coefficients": {term_names[i]: float(coef[i]) for i in np.flatnonzero(support)},
                "coef_std": {term_names[i]: float(std[i]) for i in np.flatnonzero(support)},
                "inclusion": inclusion,
                "threshold": threshold,
                "_coef": coef,
                "_std": np.where(support, std, 0.0),
            }
            candidates.append((expr, extra))

        table = candidates_table(
            candidates,
            X,
            y,
            symbols,
            significant_digits=self.significant_digits,
            drop_tol=0.0,
            extra_columns=(*SINDY_COLUMNS, "_coef", "_std"),
        )
        self.library_ = library
        self.library_terms_ = terms
        missing = np.full(len(terms), np.nan)  # rows not from the sweep (the mean baseline)
        self.coef_ = np.array(
            [c if isinstance(c, np.ndarray) else missing for c in table["_coef"]]
        ).reshape(len(table), len(terms))
        self.coef_std_ = np.array(
            [c if isinstance(c, np.ndarray) else missing for c in table["_std"]]
        ).reshape(len(table), len(terms))
        return table.drop(columns=["_coef", "_std"])
