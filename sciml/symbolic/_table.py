"""The candidate table shared by all engines, and the Pareto logic on it.

A table has PySR's `equations_` shape: one row per candidate formula with

- `complexity` (int): `expression_complexity` of the formula, the same measure for every engine;
- `loss` (float): mean squared error on the data the engine was fitted on;
- `score` (float): PySR's score, -Δlog(loss)/Δcomplexity against the previous row (first row 0);
- `equation` (str): the formula in the feature names, parsable by SymPy, written with
  `+ - * / **` and `exp, log, sin, cos, tanh, sqrt, abs` only;
- `sympy_format` (sympy.Expr): the same formula as a SymPy expression,

plus optional engine-specific columns (e.g. SINDy's coefficient uncertainty). Each engine's table
is its Pareto front: rows sorted by complexity, loss strictly decreasing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import sympy as sp
from sympy.printing.str import StrPrinter

from ._parse import parse_formula

COLUMNS: tuple[str, ...] = ("complexity", "loss", "score", "equation", "sympy_format")

MODEL_SELECTION_RULES: tuple[str, ...] = ("best", "accuracy", "score")

_FUNCTIONS = (sp.exp, sp.log, sp.sin, sp.cos, sp.tanh, sp.Abs)
_OPERATORS = (sp.Add, sp.Mul, sp.Pow)


class UnsupportedExpression(ValueError):
    """A formula uses something outside the exchange vocabulary (e.g. `tan`, `nan`, `zoo`)."""


def expression_complexity(expr: sp.Expr) -> int:
    """Number of nodes in the SymPy expression tree, constants and exponents included.

    `-0.9*x*y` is `Mul(-0.9, x, y)`: 4 nodes; `x/(1 + y)` is `Mul(x, Pow(Add(1, y), -1))`: 7.
    Every engine's formulas are measured by this one function so their complexities compare.
    """
    return sum(1 for _ in sp.preorder_traversal(sp.sympify(expr, strict=True)))


def check_vocabulary(expr: sp.Expr) -> None:
    """Raise `UnsupportedExpression` unless `expr` uses only the exchange vocabulary."""
    for node in sp.preorder_traversal(expr):
        if isinstance(node, (sp.Symbol, sp.NumberSymbol, *_OPERATORS, *_FUNCTIONS)):
            continue
        if isinstance(node, sp.Number) and node.is_finite and node.is_real:
            continue
        raise UnsupportedExpression(
            f"{node} ({type(node).__name__}) is outside the formula vocabulary "
            "(+ - * / ** exp log sin cos tanh sqrt abs) in " + str(expr)
        )


class _EquationPrinter(StrPrinter):
    """SymPy's str printer with `abs` for `Abs` and floats of at most 15 digits."""

    def _print_Abs(self, expr: sp.Abs) -> str:
        return f"abs({self._print(expr.args[0])})"

    def _print_Float(self, expr: sp.Float) -> str:
        # 15 significant digits: SymPy and Python both read these back as the same double
        text = format(float(expr), ".15g")
        return text if any(c in text for c in ".en") else text + ".0"


def format_equation(expr: sp.Expr) -> str:
    """The `equation` string of a formula: SymPy-parsable, `abs` spelt as in model files."""
    return _EquationPrinter().doprint(expr)


def canonical_expression(expr: sp.Expr, symbols: Sequence[sp.Symbol]) -> sp.Expr:
    """The expression as it reads back from its `equation` string.

    SymPy re-evaluates text as it parses (`-0.9*(a + b)*c` distributes the number over the
    sum), so a table's `sympy_format` is taken from its printed `equation`, repeated until
    printing and parsing agree.
    """
    names = {str(s): s for s in symbols}
    for _ in range(5):
        again = parse_formula(format_equation(expr), names)
        if again == expr:
            break
        expr = again
    return expr


def pysr_scores(loss: Sequence[float], complexity: Sequence[int]) -> np.ndarray:
    """PySR's score for rows sorted by complexity: -Δlog(loss)/Δcomplexity, first row 0.

    A zero loss after a positive one scores `inf`, as in PySR's `calculate_scores`.
    """
    loss = np.asarray(loss, dtype=float)
    complexity = np.asarray(complexity, dtype=float)
    scores = np.zeros(len(loss))
    for i in range(1, len(loss)):
        if loss[i] > 0.0:
            scores[i] = -math.log(loss[i] / loss[i - 1]) / (complexity[i] - complexity[i - 1])
        else:
            scores[i] = math.inf
    return scores


def empty_table(extra_columns: Sequence[str] = ()) -> pd.DataFrame:
    """A table with no candidates and the right columns and dtypes."""
    table = pd.DataFrame(
        {
            "complexity": pd.Series([], dtype=int),
            "loss": pd.Series([], dtype=float),
            "score": pd.Series([], dtype=float),
            "equation": pd.Series([], dtype=object),
            "sympy_format": pd.Series([], dtype=object),
        }
    )
    for column in extra_columns:
        table[column] = pd.Series([], dtype=object)
    return table


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """Keep, for each complexity, the lowest loss, and only rows that beat every simpler one.

    Rows with a missing or non-finite loss are dropped. The result is sorted by complexity with
    strictly decreasing loss, `score` recomputed by PySR's rule, and a fresh 0..n-1 index. Other
    columns are kept as they are.
    """
    missing = [c for c in ("complexity", "loss") if c not in table.columns]
    if missing:
        raise KeyError(f"a candidate table needs columns {missing}")
    finite = table[np.isfinite(table["loss"].to_numpy(dtype=float))]
    ordered = finite.sort_values(["complexity", "loss"], kind="mergesort")
    keep: list[Any] = []
    best = math.inf
    for label, loss in zip(ordered.index, ordered["loss"].to_numpy(dtype=float)):
        if loss < best:
            keep.append(label)
            best = loss
    front = ordered.loc[keep].reset_index(drop=True)
    front["complexity"] = front["complexity"].astype(int)
    front["loss"] = front["loss"].astype(float)
    front["score"] = pysr_scores(front["loss"], front["complexity"])
    return front


def select_model(table: pd.DataFrame, rule: str = "best") -> Any:
    """Index label of the chosen row, by PySR's `model_selection` rules.

    - `"best"`: highest score among rows whose loss is within 1.5x the minimum loss;
    - `"accuracy"`: lowest loss;
    - `"score"`: highest score.

    Without a `score` column, falls back to `"accuracy"` as PySR does.
    """
    if rule not in MODEL_SELECTION_RULES:
        raise ValueError(
            f"unknown model selection rule {rule!r}; use one of {MODEL_SELECTION_RULES}"
        )
    if len(table) == 0:
        raise ValueError("cannot select a model from an empty candidate table")
    if "score" not in table.columns:
        rule = "accuracy"
    if rule == "accuracy":
        return table["loss"].idxmin()
    if rule == "score":
        return table["score"].idxmax()
    threshold = 1.5 * table["loss"].min()
    return table.loc[table["loss"] <= threshold, "score"].idxmax()


def feature_symbols(feature_names: Sequence[str]) -> list[sp.Symbol]:
    """Plain SymPy symbols for the features (no assumptions, so parsed equations compare equal)."""
    return [sp.Symbol(name) for name in feature_names]


def evaluate(expr: sp.Expr, X: np.ndarray, symbols: Sequence[sp.Symbol]) -> np.ndarray:
    """Values of `expr` at the rows of `X` (columns in the order of `symbols`), shape (n,)."""
    X = np.asarray(X, dtype=float)
    func = sp.lambdify(list(symbols), expr, modules="numpy")
    with np.errstate(all="ignore"):
        values = func(*X.T)
    return np.broadcast_to(np.asarray(values, dtype=float), (X.shape[0],)).copy()


def mse(expr: sp.Expr, X: np.ndarray, y: np.ndarray, symbols: Sequence[sp.Symbol]) -> float:
    """Mean squared error of `expr` on (X, y); `inf` where the formula is not finite on X."""
    pred = evaluate(expr, X, symbols)
    if not np.all(np.isfinite(pred)):
        return math.inf
    return float(np.mean((pred - y) ** 2))


def round_constants(expr: sp.Expr, significant_digits: int) -> sp.Expr:
    """Round every float in `expr` to `significant_digits`; integral results become integers.

    `1.000333*x` with 4 digits becomes `x` and `x**2.0` becomes `x**2`, so the structure reads
    exactly; SymPy re-simplifies the products and sums that change.
    """
    replacements: dict[sp.Basic, sp.Expr] = {}
    for f in expr.atoms(sp.Float):
        value = float(f)
        if value == 0.0 or not math.isfinite(value):
            continue
        digits = significant_digits - 1 - math.floor(math.log10(abs(value)))
        rounded = round(value, digits)
        if rounded == int(rounded) and abs(rounded) < 1e15:
            replacements[f] = sp.Integer(int(rounded))
        else:
            replacements[f] = sp.Float(rounded)
    return expr.xreplace(replacements)


def drop_negligible_terms(
    expr: sp.Expr, X: np.ndarray, y: np.ndarray, symbols: Sequence[sp.Symbol], tol: float
) -> sp.Expr:
    """Remove top-level additive terms whose RMS on X is below `tol` times the std of `y`.

    E.g. the `-0.0004` intercept that linear scaling leaves on `-0.0004 - 0.9*x*y`. Such a term
    changes R² by at most about `tol**2`; the loss is recomputed afterwards anyway.
    """
    if tol <= 0 or not isinstance(expr, sp.Add):
        return expr
    scale = float(np.std(y)) or float(np.sqrt(np.mean(np.square(y)))) or 1.0
    kept = []
    for term in expr.args:
        values = evaluate(term, X, symbols)
        if np.all(np.isfinite(values)) and np.sqrt(np.mean(values**2)) < tol * scale:
            continue
        kept.append(term)
    return sp.Add(*kept)


def _pull_scale(add: sp.Add) -> tuple[sp.Expr, sp.Expr]:
    """Split a float scale off a sum: its largest numeric factor becomes 1."""
    scale = max((t.as_coeff_Mul()[0] for t in add.args), key=lambda c: abs(float(c)))
    if not isinstance(scale, sp.Float) or scale == 0:
        return sp.Integer(1), add
    return scale, sp.Add(*(t / scale for t in add.args))


def normalise_scales(expr: sp.Expr) -> sp.Expr:
    """Move float scales out of sums that are factors, so SymPy merges them into one constant.

    Genetic programming leaves redundant scales such as `-2.474*x/(-2.474*y - 2.475)`; pulling
    the scale out of the denominator gives `0.9999*x/(0.9999*y + 1)`. The value is unchanged.
    """
    if expr.is_Atom:
        return expr
    args = [normalise_scales(a) for a in expr.args]
    if expr.is_Mul or (expr.is_Pow and args[0].is_Add and args[1].is_Integer):
        factors = args if expr.is_Mul else [expr.func(*args)]
        out: list[sp.Expr] = []
        for factor in factors:
            if factor.is_Add:
                scale, rest = _pull_scale(factor)
                out += [scale, rest]
            elif factor.is_Pow and factor.base.is_Add and factor.exp.is_Integer:
                scale, rest = _pull_scale(factor.base)
                out += [scale**factor.exp, rest**factor.exp]
            else:
                out.append(factor)
        return sp.Mul(*out)
    return expr.func(*args)


def tidy_expression(
    expr: sp.Expr,
    X: np.ndarray,
    y: np.ndarray,
    symbols: Sequence[sp.Symbol],
    *,
    significant_digits: int = 4,
    drop_tol: float = 1e-3,
    loss_rtol: float = 1e-3,
    r2_tol: float = 1e-6,
) -> sp.Expr:
    """Drop negligible terms, merge redundant scales, then round constants as the loss allows.

    Constants are rounded to `significant_digits`; where that raises the loss by more than
    `loss_rtol` (relative) and by more than `r2_tol` times the variance of y (an R² drop), two
    more digits are kept, and so on up to 15.
    """
    expr = drop_negligible_terms(sp.sympify(expr, strict=True), X, y, symbols, drop_tol)
    if not expr.atoms(sp.Float):
        return expr
    reference = mse(expr, X, y, symbols)
    normalised = normalise_scales(expr)
    if mse(normalised, X, y, symbols) <= reference * (1 + 1e-9) + 1e-15:
        expr = normalised
    allowed = reference + max(loss_rtol * reference, r2_tol * float(np.var(y)))
    for digits in range(significant_digits, 16, 2):
        rounded = round_constants(expr, digits)
        if mse(rounded, X, y, symbols) <= allowed:
            return rounded
    return expr


def candidates_table(
    candidates: Iterable[tuple[sp.Expr, Mapping[str, Any]]],
    X: np.ndarray,
    y: np.ndarray,
    symbols: Sequence[sp.Symbol],
    *,
    significant_digits: int = 4,
    drop_tol: float = 1e-3,
    extra_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """Tidy, measure and Pareto-filter candidate formulas into a table.

    `candidates` yields (expression, extra columns) pairs. The constant model (the mean of y,
    complexity 1) is always a candidate, as it heads every PySR front: PySR's "best" rule
    compares each formula with the simpler ones before it, so a front needs that baseline.
    Formulas outside the vocabulary or not finite on X are left out; duplicates (after
    tidying) keep their first occurrence.
    """
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    baseline = (sp.Float(float(np.mean(y))), {})
    for expr, extra in [*candidates, baseline]:
        tidy = tidy_expression(
            expr, X, y, symbols, significant_digits=significant_digits, drop_tol=drop_tol
        )
        try:
            tidy = canonical_expression(tidy, symbols)
            check_vocabulary(tidy)
        except (UnsupportedExpression, ValueError):
            continue
        equation = format_equation(tidy)
        loss = mse(tidy, X, y, symbols)
        if equation in seen or not math.isfinite(loss):
            continue
        seen.add(equation)
        rows.append(
            {
                "complexity": expression_complexity(tidy),
                "loss": loss,
                "score": 0.0,
                "equation": equation,
                "sympy_format": tidy,
                **extra,
            }
        )
    if not rows:
        return empty_table(extra_columns)
    return pareto_front(pd.DataFrame(rows))
