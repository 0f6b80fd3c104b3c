"""Partial theory keeps its edge (issue 12): where part of the model is declared, discovery
beats plain PySINDy on the same data (slow: trains real UDEs; CI runs them).

- van der Pol (a cubic missing term): plain PySINDy with finite differences on the same sparse,
  noisy data misses the coefficients; this pipeline recovers the equation.
- SEIR with states S, E, I, R (names SymPy reserves): the missing transmission term is found,
  and plain PySINDy never finds it at any threshold.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import sympy as sp

from sciml.discover import run_discovery
from tests._polynomials import X, Y, terms

pytestmark = pytest.mark.slow

VDP_DATA, VDP_MODEL = "data/van_der_pol/van_der_pol.csv", "data/van_der_pol/model.toml"


@pytest.fixture(scope="module")
def vdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vdp") / "run"
    run_discovery(VDP_DATA, VDP_MODEL, out, seed=0, quick=True, show_progress=False)
    return out


def _sindy_terms(model) -> dict[sp.Expr, float]:
    names = model.get_feature_names()
    coef = model.coefficients()[1]  # the y equation
    out = {}
    for name, c in zip(names, coef):
        if c != 0:
            out[sp.sympify(name.replace("^", "**").replace(" ", "*"))] = float(c)
    return out


TRUE_VDP_Y = {X: -1.0, Y: 1.0, X**2 * Y: -1.0}


def close_to_truth(found: dict[sp.Expr, float], rtol: float) -> bool:
    if set(found) != set(TRUE_VDP_Y):
        return False
    return all(abs(found[k] - v) <= rtol * abs(v) for k, v in TRUE_VDP_Y.items())


def test_plain_sindy_fails_on_vdp():
    # Finite differences of 21 noisy points per trajectory: at every threshold, the right
    # equation with coefficients within 10% is never found.
    for threshold in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5):
        assert not close_to_truth(_sindy_terms_at(threshold), rtol=0.10), threshold


def _sindy_terms_at(threshold: float) -> dict[sp.Expr, float]:
    import pysindy as ps

    df = pd.read_csv(VDP_DATA)
    groups = [g for _, g in df.groupby("trajectory", sort=False)]
    model = ps.SINDy(
        optimizer=ps.STLSQ(threshold=threshold), feature_library=ps.PolynomialLibrary(degree=3)
    )
    model.fit(
        [g[["x", "y"]].to_numpy() for g in groups],
        t=[g["t"].to_numpy() for g in groups],
        feature_names=["x", "y"],
    )
    return _sindy_terms(model)


def test_pipeline_succeeds_on_vdp(vdp_run):
    result = json.loads((vdp_run / "discovered.json").read_text())
    x_terms = terms(result["equations"]["x"])  # no residual on x; the refit frees its constant
    assert set(x_terms) == {Y} and abs(x_terms[Y] - 1.0) <= 0.05, result["equations"]
    found = terms(result["equations"]["y"])
    assert close_to_truth(found, rtol=0.10), result["equations"]


# -- a second partial-theory system, with state names SymPy reserves for itself ----------------
SEIR_DATA, SEIR_MODEL = "data/seir/seir.csv", "data/seir/model.toml"
S_, E_, I_ = (sp.Symbol(n) for n in "SEI")


@pytest.fixture(scope="module")
def seir_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seir") / "run"
    run_discovery(
        SEIR_DATA, SEIR_MODEL, out, seed=0, engines=("sindy",), quick=True, show_progress=False
    )
    return out


def seir_terms(equation: str) -> dict[sp.Expr, float]:
    """Term -> coefficient, parsing with the model's own symbols (never SymPy's S, E, I)."""
    from sciml.report._math import parse

    expr = sp.expand(parse(equation, ["S", "E", "I", "R"], where="test"))
    out = {}
    for term in sp.Add.make_args(expr):
        coeff, rest = term.as_coeff_Mul()
        out[rest.xreplace({s: sp.Symbol(s.name) for s in rest.free_symbols})] = float(coeff)
    return out


def test_seir_names_and_missing_transmission(seir_run):
    """States S, E, I, R go through selection, outputs and the report; the transmission term
    the theory lacks is found in both equations it belongs to, within 10%."""
    from sciml.report import render_report

    result = json.loads((seir_run / "discovered.json").read_text())
    s_terms, e_terms = seir_terms(result["equations"]["S"]), seir_terms(result["equations"]["E"])
    assert set(s_terms) == {S_ * I_}, result["equations"]
    assert set(e_terms) == {S_ * I_, E_}, result["equations"]
    np.testing.assert_allclose([s_terms[S_ * I_], e_terms[S_ * I_]], [-1.5, 1.5], rtol=0.10)
    assert render_report(seir_run).exists()


def test_plain_sindy_fails_on_seir():
    """On the same data, plain PySINDy (finite differences, cubic library) never finds
    dS/dt = -beta*S*I within 10%, at any threshold: the partial theory keeps its edge."""
    import pysindy as ps

    df = pd.read_csv(SEIR_DATA)
    groups = [g for _, g in df.groupby("trajectory", sort=False)]
    names = ["S", "E", "I", "R"]
    for threshold in (0.01, 0.02, 0.05, 0.1, 0.2):
        model = ps.SINDy(
            optimizer=ps.STLSQ(threshold=threshold),
            feature_library=ps.PolynomialLibrary(degree=3),
        )
        model.fit(
            [g[names].to_numpy() for g in groups],
            t=[g["t"].to_numpy() for g in groups],
            feature_names=names,
        )
        found = {
            n: float(c)
            for n, c in zip(model.get_feature_names(), model.coefficients()[0])
            if c != 0
        }
        exact = set(found) == {"S I"} and abs(found["S I"] + 1.5) <= 0.15
        assert not exact, (threshold, found)
