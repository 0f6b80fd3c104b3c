"""PySR (SymbolicRegression.jl): imported lazily, and only where a usable Julia is found.

`import pysr` starts Julia, and when none is installed it tries to download one. Here, before
importing, `find_julia` looks (without running anything) for a Julia executable and for a depot
holding SymbolicRegression.jl; when either is missing `PySREngine.fit` raises `EngineUnavailable`
with a message that says how to point PySR at an existing installation.

Julia is single-threaded at the interpreter: call `PySREngine.fit` from the main thread.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sympy as sp

from ._base import EngineUnavailable, SymbolicEngine
from ._parse import FormulaParseError, parse_formula
from ._table import (
    UnsupportedExpression,
    canonical_expression,
    check_vocabulary,
    empty_table,
    expression_complexity,
    feature_symbols,
    format_equation,
    mse,
    pareto_front,
)

JULIA_HELP = (
    "PySR needs a Julia installation with the SymbolicRegression.jl package, and it would try "
    "to download both on import. To use an existing installation, set PYTHON_JULIAPKG_EXE to "
    "the julia executable, JULIA_DEPOT_PATH to a Julia depot in which SymbolicRegression.jl is "
    "installed, and PYTHON_JULIAPKG_OFFLINE=yes so that nothing is downloaded."
)

PYSR_COLUMNS: tuple[str, ...] = ("pysr_complexity",)


@dataclass(frozen=True)
class JuliaSetup:
    """Where a usable Julia was found: the executable and the depot holding SymbolicRegression."""

    executable: str
    depot: str


def _is_executable(path: str | os.PathLike[str] | None) -> bool:
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def julia_depots(environ: Mapping[str, str]) -> list[Path]:
    """Julia depots in search order: `JULIA_DEPOT_PATH` entries (empty ones mean the default
    `~/.julia`), else `~/.julia`."""
    default = Path(environ.get("HOME", str(Path.home()))) / ".julia"
    raw = environ.get("JULIA_DEPOT_PATH")
    if not raw:
        return [default]
    depots = [Path(entry) if entry else default for entry in raw.split(os.pathsep)]
    return list(dict.fromkeys(depots))


def julia_candidates(environ: Mapping[str, str]) -> list[str]:
    """Julia executables PySR (through juliapkg) could use, most specific first; none is run.

    `PYTHON_JULIAPKG_EXE` when set (juliapkg then uses it or fails), else juliapkg's own
    install folder in this environment, `julia` on the `PATH` of `environ`, and juliaup's
    installs in the depots.
    """
    candidates: list[str] = []
    configured = environ.get("PYTHON_JULIAPKG_EXE") or sys._xoptions.get("juliapkg-exe")
    if configured:
        # juliapkg uses this one or fails: it is the only candidate.
        return [str(configured)]
    project = environ.get("PYTHON_JULIAPKG_PROJECT")
    if not project:
        project = os.path.join(sys.prefix, "julia_env") if sys.prefix != sys.base_prefix else ""
    if project:
        candidates.append(os.path.join(project, "pyjuliapkg", "install", "bin", "julia"))
    found = shutil.which("julia", path=environ.get("PATH", os.defpath))
    if found:
        candidates.append(found)
    for depot in julia_depots(environ):
        juliaup = depot / "juliaup"
        if juliaup.is_dir():
            candidates += sorted(str(p) for p in juliaup.glob("julia-*/bin/julia"))
    return candidates


def find_julia(environ: Mapping[str, str] | None = None) -> tuple[JuliaSetup | None, str]:
    """Look for a Julia executable and a depot with SymbolicRegression.jl; run nothing.

    Returns (setup, explanation); setup is None when PySR cannot be used without downloads.
    """
    environ = os.environ if environ is None else environ
    if importlib.util.find_spec("juliacall") is None:
        return None, "the Python package juliacall (a PySR dependency) is not installed. " + (
            JULIA_HELP
        )
    executables = julia_candidates(environ)
    usable = [exe for exe in executables if _is_executable(exe)]
    if not usable:
        looked = ", ".join([*executables, "julia on PATH"])
        return None, f"No Julia was found (looked at: {looked}). {JULIA_HELP}"
    depots = julia_depots(environ)
    with_package = [d for d in depots if (d / "packages" / "SymbolicRegression").is_dir()]
    if not with_package:
        looked = ", ".join(str(d) for d in depots)
        return None, (
            f"Julia found at {usable[0]}, but no Julia depot holds SymbolicRegression.jl "
            f"(looked in: {looked}). {JULIA_HELP}"
        )
    setup = JuliaSetup(executable=usable[0], depot=str(with_package[0]))
    return setup, f"Julia at {setup.executable}, SymbolicRegression.jl in {setup.depot}"


def pysr_expression(
    equation: str, feature_names: Sequence[str], symbols: Sequence[sp.Symbol] | None = None
) -> sp.Expr:
    """Parse one of PySR's equation strings, e.g. `"(x0 * x1) * -0.9001"` or `"square(x)"`.

    Variables are the feature names; PySR's default names `x0, x1, ...` also map to the
    features by position, unless a feature is itself called so (feature names win).
    """
    symbols = feature_symbols(feature_names) if symbols is None else list(symbols)
    names = {f"x{i}": s for i, s in enumerate(symbols)}
    names.update(zip(feature_names, symbols))
    return parse_formula(str(equation), names)


def table_from_pysr(
    equations: pd.DataFrame,
    feature_names: Sequence[str],
    *,
    X: np.ndarray | None = None,
    y: np.ndarray | None = None,
) -> pd.DataFrame:
    """Convert PySR's `equations_` into the candidate table.

    Each `equation` string is parsed safely (never evaluated), re-measured with
    `expression_complexity` (PySR's own is kept as `pysr_complexity`), written in the common
    vocabulary, and the result is filtered to the Pareto front with scores recomputed. The loss
    is PySR's, unless X and y are given, in which case it is the mean squared error on them.
    Rows whose formula falls outside the vocabulary (e.g. `tan`) are left out with a warning.
    """
    for column in ("complexity", "loss", "equation"):
        if column not in equations.columns:
            raise KeyError(f"PySR equations table has no {column!r} column")
    symbols = feature_symbols(feature_names)
    rows = []
    for _, row in equations.iterrows():
        try:
            expr = pysr_expression(row["equation"], feature_names, symbols)
            expr = canonical_expression(expr, symbols)
            check_vocabulary(expr)
        except (FormulaParseError, UnsupportedExpression) as err:
            warnings.warn(f"PySR candidate {row['equation']!r} left out: {err}", stacklevel=2)
            continue
        loss = float(row["loss"]) if X is None or y is None else mse(expr, X, y, symbols)
        rows.append(
            {
                "complexity": expression_complexity(expr),
                "loss": loss,
                "score": 0.0,
                "equation": format_equation(expr),
                "sympy_format": expr,
                "pysr_complexity": int(row["complexity"]),
            }
        )
    if not rows:
        return empty_table(PYSR_COLUMNS)
    return pareto_front(pd.DataFrame(rows))


class PySREngine(SymbolicEngine):
    """PySR's `PySRRegressor`, imported inside `fit` and only when `find_julia` finds Julia.

    Deterministic by default (`deterministic=True, parallelism="serial"`, `random_state`).
    Operators are limited to the exchange vocabulary. `options` are passed on to
    `PySRRegressor` and override the settings here.

    Fitted attributes: `equations_` (extra column `pysr_complexity`), `regressor_`.
    """

    name = "pysr"

    def __init__(
        self,
        niterations: int = 40,
        binary_operators: Sequence[str] = ("+", "-", "*", "/"),
        unary_operators: Sequence[str] = ("exp", "log", "sin", "cos", "tanh", "sqrt"),
        maxsize: int = 20,
        populations: int = 8,
        deterministic: bool = True,
        random_state: int | None = 0,
        options: Mapping[str, Any] | None = None,
    ):
        self.niterations = niterations
        self.binary_operators = binary_operators
        self.unary_operators = unary_operators
        self.maxsize = maxsize
        self.populations = populations
        self.deterministic = deterministic
        self.random_state = random_state
        self.options = options

    @classmethod
    def available(cls) -> tuple[bool, str]:
        setup, explanation = find_julia()
        if setup is None:
            return False, f"PySR cannot run: {explanation}"
        return True, explanation

    def _fit(self, X: np.ndarray, y: np.ndarray, feature_names: list[str]) -> pd.DataFrame:
        try:
            from pysr import PySRRegressor  # lazy: starts Julia
        except Exception as err:  # juliapkg and juliacall raise plain Exceptions
            raise EngineUnavailable(f"PySR could not start Julia ({err}). {JULIA_HELP}") from err

        settings: dict[str, Any] = {
            "niterations": self.niterations,
            "binary_operators": list(self.binary_operators),
            "unary_operators": list(self.unary_operators),
            "maxsize": self.maxsize,
            "populations": self.populations,
            "model_selection": "best",
            "progress": False,
            "verbosity": 0,
            "temp_equation_file": True,
        }
        if self.deterministic:
            settings.update(deterministic=True, parallelism="serial")
        settings["random_state"] = 0 if self.random_state is None else int(self.random_state)
        settings.update(self.options or {})
        regressor = PySRRegressor(**settings)
        regressor.fit(X, y, variable_names=list(feature_names))
        self.regressor_ = regressor
        return table_from_pysr(regressor.equations_, feature_names, X=X, y=y)
