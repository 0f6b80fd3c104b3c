"""Symbolic distillation: formulas for the neural residual of a universal differential equation.

Engines are scikit-learn regressors (`__init__` stores settings, `fit(X, y)` validates and
returns self, fitted attributes end in `_`; sklearn's estimator checks pass, so `clone`,
pipelines and `cross_val_score` work). Features are named by `fit(..., feature_names=...)`, a
DataFrame's columns, or `x0, x1, ...`. All produce one candidate table in PySR's `equations_`
shape, `equations_`:

- `complexity` (int, `expression_complexity`: nodes of the SymPy tree, the same for all engines),
- `loss` (float, mean squared error on the fitted data),
- `score` (float, PySR's -Δlog(loss)/Δcomplexity along the front, first row 0),
- `equation` (str, SymPy-parsable in the feature names: `+ - * / **`, exp log sin cos tanh
  sqrt abs),
- `sympy_format` (sympy.Expr),

plus engine-specific columns. Each table is the engine's Pareto front (`pareto_front`).

- `SINDyEngine`: sparse regression on a PySINDy library, threshold sweep and bagging
  (coefficient standard deviations in `coef_std`);
- `OperonEngine`: genetic programming with pyoperon (no Julia needed);
- `PySREngine`: PySR, imported lazily; raises `EngineUnavailable` where no Julia is found.

`run_engines` runs several, reports unavailable ones and returns one combined table;
`select_model` applies PySR's model-selection rule to any table.
"""

from ._base import EngineUnavailable, SymbolicEngine, validate_regression_data
from ._operon import OperonEngine
from ._parse import FormulaParseError, parse_formula
from ._pysr import JuliaSetup, PySREngine, find_julia, pysr_expression, table_from_pysr
from ._run import ENGINES, make_engines, run_engines
from ._sindy import SINDyEngine
from ._table import (
    COLUMNS,
    UnsupportedExpression,
    check_vocabulary,
    expression_complexity,
    format_equation,
    pareto_front,
    pysr_scores,
    select_model,
)

__all__ = [
    "COLUMNS",
    "ENGINES",
    "EngineUnavailable",
    "FormulaParseError",
    "JuliaSetup",
    "OperonEngine",
    "PySREngine",
    "SINDyEngine",
    "SymbolicEngine",
    "UnsupportedExpression",
    "check_vocabulary",
    "expression_complexity",
    "find_julia",
    "format_equation",
    "make_engines",
    "pareto_front",
    "parse_formula",
    "pysr_expression",
    "pysr_scores",
    "run_engines",
    "select_model",
    "table_from_pysr",
    "validate_regression_data",
]
