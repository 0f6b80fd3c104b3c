"""Symbolic engines, the shared candidate table, Pareto logic and PySR's selection rule."""

from __future__ import annotations

import importlib.util
import math
import os
import stat
import sys
import warnings

import numpy as np
import pandas as pd
import pysindy as ps
import pytest
import sympy as sp
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from sciml import InputError
from sciml._expr import parse_expression
from sciml.symbolic import (
    COLUMNS,
    EngineUnavailable,
    FormulaParseError,
    OperonEngine,
    PySREngine,
    SINDyEngine,
    expression_complexity,
    find_julia,
    format_equation,
    make_engines,
    pareto_front,
    parse_formula,
    pysr_scores,
    run_engines,
    select_model,
    table_from_pysr,
)

NAMES = ["x", "y"]
X_SYM, Y_SYM = sp.symbols("x y")
ENV_VARS = ("PYTHON_JULIAPKG_EXE", "PYTHON_JULIAPKG_OFFLINE=yes", "JULIA_DEPOT_PATH")

# Small but honest budgets: the whole file runs in well under two minutes on two cores.
FAST_OPERON = dict(population_size=300, generations=60, max_evaluations=60_000)


def states(n: int = 400, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.3, 5.0, size=(n, 2))


def lv_residual(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The Lotka–Volterra interaction term -0.9*x*y, as a UDE residual network would give it."""
    X = states(seed=seed)
    y = -0.9 * X[:, 0] * X[:, 1] + noise * np.random.default_rng(seed + 1).standard_normal(len(X))
    return X, y


def saturating(noise: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """A non-polynomial (Holling type II) target, x/(1 + y)."""
    X = states(seed=3)
    y = X[:, 0] / (1 + X[:, 1]) + noise * np.random.default_rng(4).standard_normal(len(X))
    return X, y


def xy_coefficients(table: pd.DataFrame) -> list[float]:
    """Coefficients c of candidates that are exactly c*x*y."""
    found = []
    for expr in table["sympy_format"]:
        coeff, rest = sp.sympify(expr).as_coeff_Mul()
        if rest == X_SYM * Y_SYM:
            found.append(float(coeff))
    return found


def r2(table: pd.DataFrame, y: np.ndarray) -> float:
    return 1.0 - table["loss"].min() / float(np.var(y))


def assert_contract(table: pd.DataFrame, X: np.ndarray, y: np.ndarray) -> None:
    """Every engine's table: PySR's columns, a strict Pareto front, honest numbers."""
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert len(table) >= 1
    assert table["complexity"].dtype.kind == "i"
    assert np.all(np.diff(table["complexity"]) > 0)
    assert np.all(np.diff(table["loss"]) < 0)
    np.testing.assert_allclose(table["score"], pysr_scores(table["loss"], table["complexity"]))
    assert table["score"].iloc[0] == 0.0
    symbols = {name: sp.Symbol(name) for name in NAMES}
    allowed = {"exp", "log", "sin", "cos", "tanh", "sqrt", "abs"}
    for _, row in table.iterrows():
        expr = row["sympy_format"]
        # the equation string is plain SymPy in the feature names, and the model-file parser
        # (which knows no engine) reads it too
        assert sp.sympify(row["equation"], locals=symbols) == expr
        functions = {f.func.__name__.lower() for f in expr.atoms(sp.Function)}
        assert functions <= allowed, row["equation"]
        assert row["complexity"] == expression_complexity(expr)
        f = sp.lambdify([X_SYM, Y_SYM], expr, "numpy")
        pred = np.broadcast_to(f(X[:, 0], X[:, 1]), y.shape)
        assert row["loss"] == pytest.approx(np.mean((pred - y) ** 2), rel=1e-9)
        parsed = parse_expression(row["equation"], symbols, where="test")
        g = sp.lambdify([X_SYM, Y_SYM], parsed, "numpy")
        np.testing.assert_allclose(np.broadcast_to(g(X[:, 0], X[:, 1]), y.shape), pred)


@pytest.fixture()
def no_julia(monkeypatch, tmp_path):
    """An environment without any Julia: empty PATH, empty depot, nothing configured."""
    for var in ("PYTHON_JULIAPKG_EXE", "PYTHON_JULIAPKG_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "bin").mkdir()
    (tmp_path / "depot").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("JULIA_DEPOT_PATH", str(tmp_path / "depot"))
    monkeypatch.setenv("PYTHON_JULIAPKG_PROJECT", str(tmp_path / "project"))
    return tmp_path


# ------------------------------------------------------------------ table and Pareto logic


def test_expression_complexity_counts_tree_nodes_with_constants():
    x, y = X_SYM, Y_SYM
    assert expression_complexity(-0.9 * x * y) == 4  # Mul(-0.9, x, y)
    assert expression_complexity(x / (1 + y)) == 7  # Mul(x, Pow(Add(1, y), -1))
    assert expression_complexity(0.5 * sp.sin(x)) == 4
    assert expression_complexity(sp.Float(2.0)) == 1
    # equal formulas, however printed, measure the same
    assert expression_complexity(parse_formula("(x * y) * -0.9", {"x": x, "y": y})) == 4


def test_pareto_front_filters_and_rescores():
    table = pd.DataFrame(
        {
            "complexity": [5, 1, 3, 3, 7, 9, 4],
            "loss": [5.0, 10.0, 2.0, 1.0, 0.1, np.nan, 1.0],
            "score": [9.0] * 7,
            "equation": ["e5", "e1", "e3b", "e3a", "e7", "e9", "e4"],
        }
    )
    front = pareto_front(table)
    assert list(front["equation"]) == ["e1", "e3a", "e7"]
    assert list(front.index) == [0, 1, 2]
    np.testing.assert_allclose(front["score"], [0.0, -math.log(0.1) / 2, -math.log(0.1) / 4])


def test_pysr_scores_match_pysr_definition():
    scores = pysr_scores([4.0, 1.0, 0.5, 0.0], [1, 3, 4, 6])
    np.testing.assert_allclose(scores[:3], [0.0, math.log(4) / 2, math.log(2)])
    assert scores[3] == math.inf


def test_select_model_follows_pysr_rules():
    table = pd.DataFrame(
        {
            "complexity": [1, 3, 5, 7, 9],
            "loss": [10.0, 2.0, 0.13, 0.11, 0.1],
            "score": [0.0, 0.8, 1.4, 0.08, 0.05],
        },
        index=[10, 11, 12, 13, 14],
    )
    assert select_model(table, "best") == 12
    assert select_model(table, "accuracy") == 14
    assert select_model(table, "score") == 12
    # the highest score is excluded by "best" when its loss is above 1.5x the minimum
    table.loc[11, "score"] = 5.0
    assert select_model(table, "score") == 11
    assert select_model(table, "best") == 12
    assert select_model(table.drop(columns="score"), "best") == 14
    with pytest.raises(ValueError, match="unknown model selection"):
        select_model(table, "bic")


def test_format_equation_round_trips_through_sympy():
    x, y = X_SYM, Y_SYM
    exprs = [
        -0.9001 * x * y + 1.5e-7,
        sp.Abs(x) ** sp.Rational(1, 2) - sp.tanh(y) / (x + 2.5),
        sp.exp(-0.3593 * y) * sp.log(x) + sp.cos(x) ** 2,
        sp.Integer(0),
    ]
    for expr in exprs:
        text = format_equation(expr)
        assert "Abs" not in text
        assert sp.sympify(text, locals={"x": x, "y": y}) == expr


def test_parse_formula_runs_no_code():
    symbols = {"x": X_SYM}
    for text in ["__import__('os').system('true')", "x.real", "(lambda: 1)()", "x if x else 1"]:
        with pytest.raises(FormulaParseError):
            parse_formula(text, symbols)
    assert parse_formula("square(x) ^ 2 * 3", symbols) == 3 * X_SYM**4


# ------------------------------------------------------------------------------ engines


@pytest.fixture(scope="module")
def lv_data():
    return lv_residual(noise=0.01)


@pytest.fixture(scope="module")
def sindy_lv(lv_data):
    X, y = lv_data
    return SINDyEngine(random_state=0).fit(X, y, feature_names=NAMES)


@pytest.fixture(scope="module")
def operon_lv(lv_data):
    X, y = lv_data
    return OperonEngine(random_state=0, **FAST_OPERON).fit(X, y, feature_names=NAMES)


@pytest.mark.parametrize("fitted", ["sindy_lv", "operon_lv"])
def test_engine_tables_honour_the_contract(fitted, request, lv_data):
    engine = request.getfixturevalue(fitted)
    assert_contract(engine.equations_, *lv_data)
    assert engine.variable_names_ == NAMES and engine.n_features_in_ == 2


@pytest.mark.parametrize("fitted", ["sindy_lv", "operon_lv"])
def test_engines_find_lotka_volterra_interaction(fitted, request, lv_data):
    engine = request.getfixturevalue(fitted)
    coefficients = xy_coefficients(engine.equations_)
    assert coefficients, engine.equations_["equation"].tolist()
    assert any(abs(c / -0.9 - 1) < 0.02 for c in coefficients), coefficients
    # PySR's selection rule picks it, and predict evaluates the chosen row
    best = engine.equations_.loc[engine.best_index(), "sympy_format"]
    assert best.as_coeff_Mul()[1] == X_SYM * Y_SYM
    X, y = lv_data
    np.testing.assert_allclose(engine.predict(X), float(best.as_coeff_Mul()[0]) * X[:, 0] * X[:, 1])


def test_sindy_reports_coefficient_uncertainty(sindy_lv):
    table = sindy_lv.equations_
    row = table.loc[sindy_lv.best_index()]
    assert row["terms"] == ["x*y"]
    assert row["coefficients"]["x*y"] == pytest.approx(-0.9, rel=0.01)
    assert 0 < row["coef_std"]["x*y"] < 0.01
    assert row["inclusion"] > 0.5
    assert sindy_lv.coef_.shape == sindy_lv.coef_std_.shape == (len(table), 10)
    assert [str(t) for t in sindy_lv.library_terms_][4] == "x*y"


def test_sindy_uncertainty_shrinks_with_less_noise():
    def xy_std(noise: float) -> float:
        X, y = lv_residual(noise=noise, seed=5)
        engine = SINDyEngine(random_state=0).fit(X, y, feature_names=NAMES)
        row = engine.equations_.loc[engine.best_index()]
        assert row["terms"] == ["x*y"]
        return row["coef_std"]["x*y"]

    noisy, clean = xy_std(0.3), xy_std(0.03)
    assert clean < noisy / 5


def test_sindy_accepts_an_extra_library_strategy():
    X = states(seed=7)
    y = 0.5 * np.sin(X[:, 0]) + 1e-3 * np.random.default_rng(8).standard_normal(len(X))
    extra = ps.CustomLibrary(
        library_functions=[lambda a: np.sin(a), lambda a: np.cos(a)],
        function_names=[lambda s: f"sin({s})", lambda s: f"cos({s})"],
    )
    plain = SINDyEngine(degree=2).fit(X, y, feature_names=NAMES)
    rich = SINDyEngine(degree=2, extra_library=extra).fit(X, y, feature_names=NAMES)
    best = rich.equations_.loc[rich.best_index()]
    assert best["terms"] == ["sin(x)"]
    assert best["sympy_format"] == sp.Float(0.5) * sp.sin(X_SYM)
    assert rich.equations_["loss"].min() < plain.equations_["loss"].min() / 100


def test_operon_finds_a_non_polynomial_target_sindy_cannot():
    X, y = saturating()
    operon = OperonEngine(random_state=0).fit(X, y, feature_names=NAMES)
    sindy = SINDyEngine(random_state=0).fit(X, y, feature_names=NAMES)
    assert_contract(operon.equations_, X, y)
    assert r2(operon.equations_, y) > 0.99
    # a cubic polynomial library only approximates x/(1+y): 100x the squared error
    assert sindy.equations_["loss"].min() > 100 * operon.equations_["loss"].min()


def test_same_seed_gives_identical_tables(lv_data, sindy_lv, operon_lv):
    X, y = lv_data
    again = {
        "sindy": SINDyEngine(random_state=0).fit(X, y, feature_names=NAMES),
        "operon": OperonEngine(random_state=0, **FAST_OPERON).fit(X, y, feature_names=NAMES),
    }
    for first, second in ((sindy_lv, again["sindy"]), (operon_lv, again["operon"])):
        columns = [c for c in first.equations_.columns if c != "sympy_format"]
        pd.testing.assert_frame_equal(first.equations_[columns], second.equations_[columns])
    np.testing.assert_array_equal(sindy_lv.coef_std_, again["sindy"].coef_std_)


def test_estimator_contract_and_validation(lv_data):
    X, y = lv_data
    engine = OperonEngine(generations=3, random_state=7)
    assert not hasattr(engine, "equations_")
    assert clone(engine).get_params() == engine.get_params()
    assert engine.set_params(generations=5).generations == 5
    bad_X = X.copy()
    bad_X[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        SINDyEngine().fit(bad_X, y, feature_names=NAMES)
    with pytest.raises(InputError, match="feature names"):
        SINDyEngine().fit(X, y, feature_names=["x"])
    with pytest.raises(InputError, match="'sin'"):
        SINDyEngine().fit(X, y, feature_names=["sin", "y"])
    with pytest.raises(InputError, match="inconsistent numbers of samples"):
        SINDyEngine().fit(X, y[:-1], feature_names=NAMES)


# ------------------------------------------------------------------- scikit-learn's contract
# Small settings: the checks test the contract (validation, cloning, pickling, invariances),
# not the search; each fits a few dozen times on sklearn's own small data sets.
CHECKED = [
    SINDyEngine(degree=1, n_bootstrap=2, thresholds=(0.01, 0.1), greedy_terms=2),
    OperonEngine(population_size=50, generations=5, max_evaluations=2000),
    PySREngine(niterations=2),
]


@parametrize_with_checks(CHECKED)
def test_sklearn_estimator_checks(estimator, check):
    """sklearn's estimator checks, all of them; an engine that cannot run here (PySR without
    Julia) passes the ones that fail before running it (bad input refused) and skips the rest."""
    try:
        check(estimator)
    except (EngineUnavailable, AssertionError) as err:
        cause = err if isinstance(err, EngineUnavailable) else err.__cause__
        if not isinstance(cause, EngineUnavailable):  # a check that wraps the fit's error
            raise
        pytest.skip(f"{type(estimator).__name__} cannot fit here: {str(cause)[:80]}")


def test_plain_fit_names_features_x0_x1_and_cross_validates(lv_data):
    X, y = lv_data
    engine = SINDyEngine(degree=2, n_bootstrap=0).fit(X, y)  # no feature names
    assert engine.variable_names_ == ["x0", "x1"] and not hasattr(engine, "feature_names_in_")
    coefficient, rest = engine.equations_.loc[engine.best_index(), "sympy_format"].as_coeff_Mul()
    assert str(rest) == "x0*x1" and abs(coefficient + 0.9) < 0.01
    assert engine.score(X, y) > 0.999
    named = SINDyEngine(degree=2, n_bootstrap=0).fit(pd.DataFrame(X, columns=["S", "I"]), y)
    assert named.variable_names_ == ["S", "I"] and list(named.feature_names_in_) == ["S", "I"]
    assert any(str(e.as_coeff_Mul()[1]) == "I*S" for e in named.equations_["sympy_format"])
    from sklearn.model_selection import cross_val_score

    fresh = clone(engine)
    assert not hasattr(fresh, "equations_") and fresh.get_params() == engine.get_params()
    scores = cross_val_score(fresh, X, y, cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.999)
    with pytest.raises(InputError, match="2 features"):
        engine.predict(X[:, :1])


# ----------------------------------------------------------------------------------- PySR


# PySR hall-of-fame structures (complexity as PySR counts it, formula as Julia prints it),
# nested so that each fits at least as well as the one before, as on a real front.
PYSR_STRUCTURES = [
    (1, "{0}", lambda a, b: np.ones_like(a)),
    (3, "(x1 * {0})", lambda a, b: b),
    (5, "((x0 * x1) * {0})", lambda a, b: a * b),
    (7, "(((x0 * x1) * {0}) + {1})", lambda a, b: np.ones_like(a)),
    (10, "((((x0 * x1) * {0}) + {1}) + (square(x1) * {2}))", lambda a, b: b**2),
    (13, "(((((x0 * x1) * {0}) + {1}) + (square(x1) * {2})) - ({3} / x0))", lambda a, b: -1 / a),
    (
        16,
        "((((((x0 * x1) * {0}) + {1}) + (square(x1) * {2})) - ({3} / x0)) + (tan(x0) * {4}))",
        lambda a, b: np.tan(a),
    ),
]


def pysr_equations(X: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """A table exactly as `PySRRegressor.equations_` has it (columns, order, formats).

    Constants are least-squares optimal for each structure and printed with 8 digits; losses
    are mean squared errors; scores follow pysr/sr.py's `calculate_scores`, written out.
    """
    mappings = {"square": lambda a: a**2, "x0": sp.Symbol("x0"), "x1": sp.Symbol("x1")}
    rows, basis = [], []
    for complexity, template, column in PYSR_STRUCTURES:
        basis = (
            [column(X[:, 0], X[:, 1])] if complexity <= 5 else [*basis, column(X[:, 0], X[:, 1])]
        )
        coef = np.linalg.lstsq(np.column_stack(basis), y, rcond=None)[0]
        equation = template.format(*(f"{c:.8g}" for c in coef))
        expr = sp.sympify(equation, locals=mappings)  # as pysr.export_sympy.pysr2sympy does
        f = sp.lambdify(sp.symbols("x0 x1"), expr, "numpy")
        pred = np.broadcast_to(f(X[:, 0], X[:, 1]), y.shape)
        rows.append(
            {
                "complexity": complexity,
                "loss": float(np.mean((pred - y) ** 2)),
                "equation": equation,
                "sympy_format": expr,
                "lambda_format": f,
            }
        )
    df = pd.DataFrame(rows)
    assert np.all(np.diff(df["loss"]) < 0), "a PySR hall of fame is a Pareto front"
    scores, last_loss, last_complexity = [], None, 0
    for _, row in df.iterrows():
        if last_loss is None:
            scores.append(0.0)
        elif row["loss"] > 0.0:
            scores.append(-np.log(row["loss"] / last_loss) / (row["complexity"] - last_complexity))
        else:
            scores.append(np.inf)
        last_loss, last_complexity = row["loss"], row["complexity"]
    df.insert(3, "score", scores)
    return df[["complexity", "loss", "equation", "score", "sympy_format", "lambda_format"]]


def test_table_from_pysr_on_a_real_equations_table(lv_data):
    X, y = lv_data
    raw = pysr_equations(X, y)
    # PySR's own selection on its own table: the rule written out as in pysr/sr.py
    threshold = 1.5 * raw["loss"].min()
    expected = raw.query(f"loss <= {threshold}")["score"].idxmax()
    assert select_model(raw, "best") == expected == 2  # ((x0 * x1) * c)

    with pytest.warns(UserWarning, match="tan"):
        table = table_from_pysr(raw, NAMES)
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert len(table) == len(raw) - 1  # the tan row is outside the vocabulary
    assert table["complexity"].tolist() == [1, 3, 4, 6, 11, 16]
    assert table["pysr_complexity"].tolist() == [1, 3, 5, 7, 10, 13]
    for (_, row), equation in zip(table.iterrows(), raw["equation"]):
        assert row["complexity"] == expression_complexity(row["sympy_format"])
        assert set(row["sympy_format"].free_symbols) <= {X_SYM, Y_SYM}
        renamed = row["sympy_format"].subs({X_SYM: sp.Symbol("x0"), Y_SYM: sp.Symbol("x1")})
        assert renamed == sp.sympify(equation, locals={"square": lambda a: a**2})
    np.testing.assert_allclose(table["loss"], raw["loss"].iloc[:-1])
    np.testing.assert_allclose(table["score"], pysr_scores(table["loss"], table["complexity"]))
    best = table.loc[select_model(table, "best")]
    coeff, rest = best["sympy_format"].as_coeff_Mul()
    assert rest == X_SYM * Y_SYM and coeff == pytest.approx(-0.9, rel=0.01)
    assert best["equation"] == f"{float(coeff)!r}*x*y"
    # given the data, losses are recomputed; here they agree with PySR's own
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        measured = table_from_pysr(raw, NAMES, X=X, y=y)
    np.testing.assert_allclose(measured["loss"], table["loss"], rtol=1e-9)


def test_table_from_pysr_reads_feature_names_as_pysr_prints_them(lv_data):
    X, y = lv_data
    raw = pysr_equations(X, y).iloc[:3].copy()
    raw["equation"] = ["-5.5121", "(y * -2.4637)", "((x * y) * -0.9001)"]
    table = table_from_pysr(raw, NAMES)
    assert table["equation"].tolist() == ["-5.5121", "-2.4637*y", "-0.9001*x*y"]


def test_pysr_engine_without_julia_raises_engine_unavailable(no_julia, lv_data):
    X, y = lv_data
    imported_before = "pysr" in sys.modules
    ok, reason = PySREngine.available()
    assert not ok and "No Julia was found" in reason
    with pytest.raises(EngineUnavailable) as info:
        PySREngine(random_state=0).fit(X, y, feature_names=NAMES)
    message = str(info.value)
    assert "No Julia was found" in message and "PySR needs" in message
    for var in ENV_VARS:
        assert var in message
    # pysr was not imported, so nothing was started or downloaded
    assert ("pysr" in sys.modules) == imported_before


def _fake_julia(tmp_path):
    exe = tmp_path / "bin" / "julia"
    exe.write_text("#!/bin/sh\nexit 1\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_find_julia_needs_an_executable_and_symbolic_regression(no_julia, tmp_path):
    if importlib.util.find_spec("juliacall") is None:  # never import it: that starts Julia
        pytest.skip("juliacall is not installed")
    exe = _fake_julia(tmp_path)
    setup, reason = find_julia()
    assert setup is None and "SymbolicRegression.jl" in reason and str(exe) in reason
    (tmp_path / "depot" / "packages" / "SymbolicRegression").mkdir(parents=True)
    setup, _ = find_julia()
    assert setup is not None
    assert setup.executable == str(exe) and setup.depot == str(tmp_path / "depot")
    # an explicit PYTHON_JULIAPKG_EXE is the only candidate, as in juliapkg
    env = {**os.environ, "PYTHON_JULIAPKG_EXE": str(tmp_path / "missing" / "julia")}
    setup, reason = find_julia(env)
    assert setup is None and str(tmp_path / "missing" / "julia") in reason


@pytest.mark.julia
def test_pysr_runs_for_real_where_julia_is_installed(lv_data):
    ok, reason = PySREngine.available()
    if not ok:
        pytest.skip(f"needs Julia with SymbolicRegression.jl: {reason}")
    X, y = lv_data
    engine = PySREngine(niterations=20, random_state=0).fit(X, y, feature_names=NAMES)
    assert_contract(engine.equations_, X, y)
    assert any(abs(c / -0.9 - 1) < 0.02 for c in xy_coefficients(engine.equations_))


# --------------------------------------------------------------------------- run_engines


def test_run_engines_reports_pysr_and_keeps_the_others(no_julia, lv_data):
    X, y = lv_data
    engines = make_engines(["sindy", "operon", "pysr"], seed=0)
    assert [e.random_state for e in engines] == [0, 0, 0]
    engines[1].set_params(**FAST_OPERON)
    table, unavailable = run_engines(engines, X, y, NAMES)
    assert list(unavailable) == ["pysr"]
    assert "PYTHON_JULIAPKG_EXE" in unavailable["pysr"]
    assert table.columns[0] == "engine"
    assert set(table["engine"]) == {"sindy", "operon"}
    for name in ("sindy", "operon"):
        part = table[table["engine"] == name]
        assert xy_coefficients(part), name
    assert "coef_std" in table.columns
    with pytest.raises(InputError, match="unknown symbolic engine"):
        make_engines(["eureqa"], seed=0)
