"""Distillation's pieces on small exact problems: the term model, the refit through the ODE,
pruning and the candidate search (no UDE training, no symbolic engine)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import sympy as sp
from scipy.integrate import solve_ivp

import sciml
from sciml._model import model_from_dict, no_theory_model
from sciml._smooth import smooth
from sciml.distil import (
    SHOOTING_PERIODS,
    Candidate,
    IntegralView,
    Refitter,
    SearchSpace,
    build_term_model,
    candidate_pool,
    fallback_search,
    formula_search,
    polynomial_search,
    prune_terms,
    select_and_refit,
)

A, B, C, D = 1.3, 0.9, 0.8, 1.8  # x' = A x - B x y, y' = C x y - D y


def lotka_volterra(n=40, t_end=8.0):
    def f(_, u):
        x, y = u
        return [A * x - B * x * y, C * x * y - D * y]

    t = np.linspace(0, t_end, n)
    sol = solve_ivp(f, (0, t_end), [2.0, 1.0], t_eval=t, rtol=1e-11, atol=1e-11)
    return sciml.from_arrays(["x", "y"], [t], [sol.y.T])


def theory_model(bounds: dict[str, tuple[float, float]] | None = None):
    """The prey's growth and the predator's death declared (rates A, D); interactions unknown."""
    params = {"alpha": {"value": A}, "delta": {"value": D}}
    for name, (lo, hi) in (bounds or {}).items():
        params[name] = {
            "value": float(np.clip(params[name]["value"], lo, hi)),
            "min": lo,
            "max": hi,
        }
    return model_from_dict(
        {
            "model": {
                "states": ["x", "y"],
                "parameters": params,
                "equations": {"x": "alpha*x", "y": "-delta*y"},
            },
            "residual": {"states": ["x", "y"]},
        }
    )


def by_form(tm, params) -> dict[tuple[str, str], float]:
    """(state, term) -> coefficient."""
    forms = tm.forms(params)
    return {(t.state, str(f)): c for t, f, c in zip(tm.terms, forms, tm.coefficients(params))}


# -- the term model -------------------------------------------------------------------------------
def test_term_model_merges_theory_and_formula_terms_and_evaluates_like_them():
    model = theory_model()
    x, y = model.state_symbols
    tm = build_term_model(model, [1.0, 2.0], {"x": -0.5 * x * y + 0.25 * x, "y": 0.75 * x * y})
    # the formula's x term merges with the theory's (1.0 + 0.25), and keeps the theory's origin
    assert by_form(tm, tm.model.guesses) == {
        ("x", "x"): 1.25,
        ("x", "x*y"): -0.5,
        ("y", "y"): -2.0,
        ("y", "x*y"): 0.75,
    }
    assert [t.origin for t in tm.terms] == ["theory", "discovered", "theory", "discovered"]
    assert not set(tm.model.parameters) & {"alpha", "delta", "x", "y"}

    point = np.array([0.7, 1.9])
    field = np.asarray(tm.model.vector_field(0.0, point, np.asarray(tm.model.guesses)))
    px, py = point
    np.testing.assert_allclose(field, [1.25 * px - 0.5 * px * py, -2.0 * py + 0.75 * px * py])

    # switching a term off is a zero coefficient; setting coefficients moves only those
    off = [True, False, True, True]
    params = np.asarray(tm.model.guesses) * tm.param_mask(off)
    field = np.asarray(tm.model.vector_field(0.0, point, params))
    np.testing.assert_allclose(field[0], 1.25 * px)
    moved = tm.with_coefficients(tm.model.guesses, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(tm.coefficients(moved), [1.0, 2.0, 3.0, 4.0])
    assert tm.inlined(moved, off) == {"x": "1.0*x", "y": "4.0*x*y + 3.0*y"}
    final = tm.final_model(moved, off)
    assert final.parameters == ()
    np.testing.assert_allclose(
        np.asarray(final.vector_field(0.0, point, np.zeros(0))), [px, 3 * py + 4 * px * py]
    )


def test_inner_constants_are_parameters_found_by_what_they_are():
    model = no_theory_model(["x"])
    x = model.state_symbols[0]
    tm = build_term_model(model, [], {"x": 2.0 * sp.tanh(0.3 * x) - x})
    (inner,) = tm.inner_constants(tm.model.guesses)
    assert tm.inner_constants(tm.model.guesses) == {inner: sp.Float(0.3)}
    assert by_form(tm, tm.model.guesses) == {("x", "tanh(0.3*x)"): 2.0, ("x", "x"): -1.0}
    assert [t.origin for t in tm.terms] == ["discovered", "discovered"]
    # the inner constant is free in the model: moving it changes the field
    params = np.asarray(tm.model.guesses, dtype=float)
    params[tm.model.parameters.index(inner.name)] = 1.0
    assert by_form(tm, params) == {("x", "tanh(1.0*x)"): 2.0, ("x", "x"): -1.0}
    value = float(tm.model.vector_field(0.0, np.array([0.5]), params)[0])
    assert value == pytest.approx(2.0 * np.tanh(0.5) - 0.5)


def test_term_parameters_never_take_a_state_or_parameter_name():
    """A state and a parameter named like the term model's own (`c_x_0`, `k_x_1_0`) stay what
    they are: the coefficients and constants get names of their own."""
    model = model_from_dict(
        {
            "model": {
                "states": ["x", "c_x_0"],
                "parameters": {"k_x_1_0": 0.5},
                "equations": {"x": "k_x_1_0*c_x_0", "c_x_0": "0"},
            },
            "residual": {"states": ["x"]},
        }
    )
    x, c = model.state_symbols
    tm = build_term_model(model, [0.5], {"x": sp.tanh(0.3 * x)})
    names = tm.model.parameters
    assert not set(names) & {"x", "c_x_0", "k_x_1_0"}
    assert len(set(names)) == len(names) == 3
    assert c in tm.model.equations[0].free_symbols  # the state itself is still in its term
    assert [float(v) for v in tm.inner_constants(tm.model.guesses).values()] == [0.3]
    value = float(tm.model.vector_field(0.0, np.array([0.4, 3.0]), np.asarray(tm.model.guesses))[0])
    assert value == pytest.approx(0.5 * 3.0 + np.tanh(0.3 * 0.4))


# -- the refit ------------------------------------------------------------------------------------
def off_by(tm, factor: float) -> np.ndarray:
    return tm.with_coefficients(tm.model.guesses, factor * tm.coefficients(tm.model.guesses))


@pytest.fixture(scope="module")
def true_terms():
    """The declared model plus the true interaction terms, on exact data, and its refitter
    (multiple shooting; compiled once for the tests that use it)."""
    model = theory_model()
    x, y = model.state_symbols
    tm = build_term_model(model, [A, D], {"x": -B * x * y, "y": C * x * y})
    return tm, Refitter(tm, lotka_volterra())


@pytest.mark.parametrize("horizon", [None, np.inf], ids=["multiple-shooting", "one-shooting"])
def test_refit_recovers_exact_coefficients(true_terms, horizon):
    tm, refitter = true_terms
    if horizon is not None:
        refitter = Refitter(tm, refitter.data, horizon=horizon)
    fit = refitter.fit([True] * 4, start=off_by(tm, 1.15))
    assert fit.ok
    got = by_form(tm, fit.params)
    truth = {("x", "x"): A, ("x", "x*y"): -B, ("y", "y"): -D, ("y", "x*y"): C}
    for key, value in truth.items():
        assert got[key] == pytest.approx(value, rel=1e-4), key
    np.testing.assert_allclose(fit.y0, [[2.0, 1.0]], rtol=1e-4)
    assert np.all(tm.coefficients(fit.stderr) > 0)


def test_a_switched_off_term_costs_nothing_and_changes_nothing():
    """Only the coefficients that can move are unknowns of the refit: the model with spurious
    terms switched off refits exactly as the model without them (same coefficients, standard
    errors and parameter count), and the switched-off terms get coefficient and error 0."""
    data = lotka_volterra()
    model = theory_model()
    x, y = model.state_symbols
    small = build_term_model(model, [A, D], {"x": -B * x * y, "y": C * x * y})
    big = build_term_model(
        model, [A, D], {"x": -B * x * y + 0.05 * y**2 + 0.1 * x**2, "y": C * x * y + 0.05 * x}
    )
    mask = [
        str(t.form) not in ("y**2", "x**2") and (t.state, str(t.form)) != ("y", "x")
        for t in big.terms
    ]
    assert sum(mask) == 4 and len(mask) == 7
    ref = Refitter(small, data).fit([True] * 4, start=off_by(small, 1.1))
    start = big.with_coefficients(big.model.guesses, 1.1 * big.coefficients(big.model.guesses))
    fit = Refitter(big, data).fit(mask, start=start)
    assert fit.ok and fit.k == ref.k and fit.sse == pytest.approx(ref.sse, rel=1e-8)
    kept = {k: v for k, v in by_form(big, fit.params).items() if k in by_form(small, ref.params)}
    for key, value in by_form(small, ref.params).items():
        assert kept[key] == pytest.approx(value, rel=1e-8), key
    coef, err = big.coefficients(fit.params), big.coefficients(fit.stderr)
    off = ~np.asarray(mask)
    assert np.all(coef[off] == 0) and np.all(err[off] == 0)
    np.testing.assert_allclose(
        np.sort(err[~off]), np.sort(small.coefficients(ref.stderr)), rtol=1e-6
    )


def test_refits_of_one_model_share_at_most_two_compiled_programs():
    """A refit is compiled for its number of unknown coefficients: all of a small model's (one
    program, whatever the mask), half or all of a large one's; never fewer than it needs."""
    from sciml.distil._refit import SPLIT_ABOVE, _bucket

    small = {_bucket(n, SPLIT_ABOVE) for n in range(SPLIT_ABOVE + 1)}
    assert small == {SPLIT_ABOVE}
    for total in (SPLIT_ABOVE + 1, 50, 61):
        sizes = [_bucket(n, total) for n in range(total + 1)]
        assert all(s >= n for n, s in enumerate(sizes)) and set(sizes) == {(total + 1) // 2, total}
    assert _bucket(0, 0) == 1


def test_a_solve_that_blows_up_stops_at_the_bound():
    """x' = x² from 1 reaches infinity at t = 1: with a bound the solve fails within a few
    steps of leaving it, without one only at `max_steps`; inside the bound nothing changes."""
    import jax.numpy as jnp

    from sciml._solve import solve

    ts = jnp.linspace(0.0, 2.0, 21)
    _, ok, steps = solve(lambda t, y: y**2, jnp.array([1.0]), ts, max_steps=4096)
    assert not ok and int(steps) == 4096
    ys, ok, steps = solve(lambda t, y: y**2, jnp.array([1.0]), ts, bound=jnp.array([100.0]))
    assert not ok and int(steps) < 200 and not np.isfinite(np.asarray(ys)[-1]).any()
    free, _, _ = solve(lambda t, y: -y, jnp.array([1.0]), ts)
    bounded, ok, _ = solve(lambda t, y: -y, jnp.array([1.0]), ts, bound=jnp.array([1.5]))
    assert ok
    np.testing.assert_array_equal(np.asarray(bounded), np.asarray(free))


def lorenz_set(t_end=8.0, n=400, noise=0.01, seed=0):
    def f(_, u):
        x, y, z = u
        return [10 * (y - x), x * (28 - z) - y, x * y - 8 / 3 * z]

    t = np.linspace(0, t_end, n)
    sol = solve_ivp(f, (0, t_end), [1.0, 1.0, 20.0], t_eval=t, rtol=1e-10, atol=1e-10)
    y = sol.y.T
    y = y + noise * np.std(y, axis=0) * np.random.default_rng(seed).standard_normal(y.shape)
    return sciml.from_arrays(["x", "y", "z"], [t], [y])


def test_multiple_shooting_refits_a_chaotic_system_that_one_shooting_cannot():
    """The true Lorenz terms with every coefficient 20% off: refit through the ODE in pieces
    one characteristic period long, the coefficients come back; refit in one shooting over
    eight time units of chaos, they do not."""
    data = lorenz_set()
    model = no_theory_model(["x", "y", "z"])
    x, y, z = model.state_symbols
    truth = {"x": 10 * y - 10 * x, "y": 28 * x - x * z - y, "z": x * y - 8 / 3 * z}
    off = {s: sum(1.2 * t for t in sp.Add.make_args(e)) for s, e in truth.items()}
    tm = build_term_model(model, [], off)
    expected = {
        (s, str(t.as_coeff_Mul()[1])): float(t.as_coeff_Mul()[0])
        for s, e in truth.items()
        for t in sp.Add.make_args(e)
    }
    assert set(expected) == set(by_form(tm, tm.model.guesses))

    def error(horizon):
        fit = Refitter(tm, data, horizon=horizon).fit([True] * len(tm.terms))
        got = by_form(tm, fit.params)
        return max(abs(got[k] / v - 1) for k, v in expected.items())

    assert error(None) < 0.02
    assert error(np.inf) > 0.05


# -- pruning --------------------------------------------------------------------------------------
def test_pruning_drops_spurious_terms_and_keeps_the_true_ones():
    data = lotka_volterra()
    model = theory_model()
    x, y = model.state_symbols
    tm = build_term_model(model, [A, D], {"x": -B * x * y + 0.05 * y**2, "y": C * x * y + 0.05 * x})
    refitter = Refitter(tm, data)
    mask = [True] * len(tm.terms)
    fit = refitter.fit(mask)
    fit, mask, pruned = prune_terms(tm, refitter, fit, mask)
    assert {(p["state"], p["term"]) for p in pruned} == {("x", "y**2"), ("y", "x")}
    kept = {(t.state, str(t.form)) for t, keep in zip(tm.terms, mask) if keep}
    assert kept == {("x", "x"), ("x", "x*y"), ("y", "y"), ("y", "x*y")}
    assert by_form(tm, fit.params)[("x", "x*y")] == pytest.approx(-B, rel=1e-4)
    # a term the reviewer keeps is never pruned
    forced = next(i for i, t in enumerate(tm.terms) if str(t.form) == "y**2")
    _, mask, pruned = prune_terms(
        tm, refitter, refitter.fit([True] * 6), [True] * 6, forced={forced}
    )
    assert mask[forced] and ("x", "y**2") not in {(p["state"], p["term"]) for p in pruned}


def test_pruning_is_bounded_by_its_patience():
    """Every trial is a refit through the ODE: a rejected term is never tried again, and
    `PATIENCE` rejections in a row end the pruning (no retrying every term after a removal)."""
    from types import SimpleNamespace

    from sciml.distil import _prune

    n = 12
    terms = [SimpleNamespace(origin="discovered", state="x", form=f"t{i}") for i in range(n)]
    # significance |coef / stderr| = i + 1: term 0 is tried first; only terms 0 and 3 are spurious
    coef = np.arange(1.0, n + 1)
    tm = SimpleNamespace(
        terms=terms,
        coefficients=lambda values: np.array(values, dtype=float),
        with_coefficients=lambda params, values: np.array(values, dtype=float),
    )
    tried = []

    class Refitter:
        unmeasured = False  # every state measured: the BIC alone decides

        def fit(self, mask, start=None, y0=None):
            tried.append(mask.index(False) if mask.count(False) == 1 else mask)
            spurious_only = all(mask[i] or i in (0, 3) for i in range(n))
            bic = 100.0 - (n - sum(mask)) if spurious_only else 200.0
            return SimpleNamespace(params=coef, stderr=np.ones(n), y0=None, bic=bic, ok=True)

    start = SimpleNamespace(params=coef, stderr=np.ones(n), y0=None, bic=100.0, ok=True)
    _, mask, pruned = _prune.prune_terms(tm, Refitter(), start, [True] * n)
    assert [p["term"] for p in pruned] == ["t0", "t3"]
    assert not mask[0] and not mask[3] and sum(mask) == n - 2
    # t0 removed; t1, t2 rejected; t3 removed; then PATIENCE rejections in a row end the
    # pass; t3 and t0 are tried back once each (neither helps): stop
    assert len(tried) == 2 + 2 + _prune.PATIENCE + 2


def test_pruning_tries_back_a_true_term_that_spurious_ones_stood_in_for():
    """Greedy elimination takes the true but least significant term t out first; the spurious
    s stands in for it, so removing s is rejected. Tried back after the pass, t lowers the BIC,
    and a second pass then removes s."""
    from types import SimpleNamespace

    from sciml.distil import _prune

    names = ["t", "a", "s"]  # significance 1, 2, 3: t is tried first
    terms = [SimpleNamespace(origin="discovered", state="x", form=n) for n in names]
    bic = {"tas": 100, "as": 99, "s": 98, "": 105, "ts": 97, "t": 95, "ta": 96}

    def fit(mask):
        kept = "".join(n for n, m in zip(names, mask) if m)
        return SimpleNamespace(
            params=np.array([1.0, 2.0, 3.0]), stderr=np.ones(3), y0=None, bic=bic[kept], ok=True
        )

    tm = SimpleNamespace(
        terms=terms,
        coefficients=lambda values: np.array(values, dtype=float),
        with_coefficients=lambda params, values: np.array(values, dtype=float),
    )
    refitter = SimpleNamespace(fit=lambda mask, start=None, y0=None: fit(mask), unmeasured=False)
    result, mask, pruned = _prune.prune_terms(tm, refitter, fit([True] * 3), [True] * 3)
    assert mask == [True, False, False] and result.bic == 95
    assert [p["term"] for p in pruned] == ["a", "s"]


# -- candidate search -----------------------------------------------------------------------------
def candidates_table(model) -> pd.DataFrame:
    """A hand-made engines' table for the residuals -B x y (state x) and C x y (state y)."""
    x, y = model.state_symbols
    rows = [
        ("x", -0.5 * x, 2, 1e-1),
        ("x", -B * x * y, 3, 1e-9),
        ("x", -B * x * y + 0.2 * y**2, 7, 1e-4),
        ("x", sp.sin(-0.9 * y), 4, 1e-2),
        ("y", C * x * y, 3, 1e-9),
        ("y", 0.5 * x, 2, 1e-1),
    ]
    return pd.DataFrame(
        {
            "state": [r[0] for r in rows],
            "engine": "hand",
            "complexity": [r[2] for r in rows],
            "loss": [r[3] for r in rows],
            "equation": [str(r[1]) for r in rows],
            "sympy_format": [r[1] for r in rows],
        }
    )


def test_candidate_search_returns_candidates_and_finds_the_true_formulas():
    data = lotka_volterra()
    model = theory_model()
    table = candidates_table(model)
    sm = smooth(data)
    view = IntegralView.build(
        model, [A, D], data, sm, SHOOTING_PERIODS * 2 * np.pi * sm.time_scale()
    )
    pool = candidate_pool(table, model, view)
    assert pool.states == ("x", "y")
    assert pool.polynomials[3] is None and pool.polynomials[1] == {(1, 1): -B}
    assert pool.first_choice() == {"x": 1, "y": 4}  # best integral-form score per state
    space = SearchSpace(model, [A, D], data, pool)

    best, tried = polynomial_search(space, None)
    assert all(isinstance(c, Candidate) and c.kind == "polynomial" for c in tried)
    assert len({tuple(sorted(c.choice.items())) for c in tried}) == len(tried)  # each once
    assert best.choice == {"x": 1, "y": 4} and best.refit.ok
    assert all(best.refit.bic <= c.refit.bic for c in tried if c.refit.ok)
    record = best.record(table)
    assert record["choice"] == {"x": table.loc[1, "equation"], "y": table.loc[4, "equation"]}
    assert record["kind"] == "polynomial" and record["bic"] == best.refit.bic

    # a formula must beat the best polynomial clearly; the true one is not beaten
    formulas = dataclasses.replace(pool, formula_rows={"x": [3], "y": []})
    after, tried = formula_search(dataclasses.replace(space, pool=formulas), best)
    assert [c.kind for c in tried] == ["formula"] and tried[0].choice == {"x": 3, "y": 4}
    assert after is best
    assert fallback_search(space, best) == (best, [])  # nothing to fall back from


# -- declared bounds in the refit -----------------------------------------------------------------
def test_theory_coefficients_get_the_range_of_their_declared_parameters():
    model = model_from_dict(
        {
            "model": {
                "states": ["x", "y"],
                "parameters": {
                    "a": {"value": 1.0, "min": 0.0, "max": 2.0},
                    "b": {"value": 1.0, "min": 0.5},
                    "c": {"value": 0.5, "min": 0.0, "max": 1.0},
                    "e": 1.0,
                },
                "equations": {"x": "a*x - 2*b*x*y + (a - c)*y + x/(1 + c*x)", "y": "e*y + a*c*x"},
            }
        }
    )
    tm = build_term_model(model, [1.0, 1.0, 0.5, 1.0], {})
    forms = tm.forms(tm.model.guesses)
    got = {(t.state, str(f)): b for t, f, b in zip(tm.terms, forms, tm.coefficient_bounds())}
    inf = np.inf
    assert got == {
        ("x", "x"): (0.0, 2.0),
        ("x", "x*y"): (-inf, -1.0),  # -2*b, b >= 0.5
        ("x", "y"): (-1.0, 2.0),  # a - c
        ("x", "x/(0.5*x + 1)"): (-inf, inf),  # a parameter inside: its number is free
        ("y", "y"): (-inf, inf),  # e has no bounds
        ("y", "x"): (-inf, inf),  # a*c: not linear in the parameters
    }


def test_refit_keeps_theory_coefficients_within_declared_bounds(true_terms):
    """The predator's death rate declared in [1.9, 3] while the data's is 1.8: the refit of
    the theory term (into which the formula's own y term merges) stops at the bound; without
    the bound, from the same start, it finds 1.8."""
    free, refitter = true_terms
    x, y = sp.symbols("x y", real=True)
    formulas = {"x": -B * x * y, "y": C * x * y + 0.1 * y}
    bounded = build_term_model(theory_model({"delta": (1.9, 3.0)}), [A, 1.9], formulas)
    i = next(i for i, t in enumerate(bounded.terms) if (t.state, str(t.form)) == ("y", "y"))
    assert bounded.coefficient_bounds()[i] == (-3.0, -1.9)
    assert bounded.coefficients(bounded.model.guesses)[i] == -1.9  # -1.8 clipped into range
    assert [str(f) for f in free.forms(free.model.guesses)] == [
        str(f) for f in bounded.forms(bounded.model.guesses)
    ]
    fit = Refitter(bounded, refitter.data).fit([True] * 4)
    assert fit.ok
    c = bounded.coefficients(fit.params)[i]
    assert -3.0 <= c <= -1.9 and c == pytest.approx(-1.9, abs=1e-3)
    fit = refitter.fit([True] * 4, start=bounded.model.guesses)
    assert free.coefficients(fit.params)[i] == pytest.approx(-D, rel=1e-4)


def test_selection_respects_declared_bounds():
    data = lotka_volterra()
    model = theory_model({"delta": (1.9, 3.0)})
    selection = select_and_refit(model, [A, 1.9], candidates_table(model), data)
    (death,) = [t for t in selection.fitted_terms() if (t.state, str(t.form)) == ("y", "y")]
    assert death.kept and -3.0 <= death.coefficient <= -1.9


def test_refit_standard_errors_do_not_depend_on_the_guesses():
    """The same data and terms from guesses 20% under and 25% over the truth: the refit lands on the
    same coefficients, so their standard errors (from the Jacobian at the optimum) must agree
    too, whatever scale the solver works in."""
    rng = np.random.default_rng(1)
    clean = lotka_volterra()
    (tr,) = clean.trajectories
    data = sciml.from_arrays(
        ["x", "y"], [tr.t], [tr.y * (1 + 0.01 * rng.standard_normal(tr.y.shape))]
    )
    x, y = sp.symbols("x y", real=True)
    fits = []
    for factor in (0.8, 1.25):
        tm = build_term_model(
            theory_model(),
            [A * factor, D * factor],
            {"x": -factor * B * x * y, "y": factor * C * x * y},
        )
        fit = Refitter(tm, data).fit([True] * 4)
        fits.append((tm.coefficients(fit.params), tm.coefficients(fit.stderr)))
    (c1, e1), (c2, e2) = fits
    np.testing.assert_allclose(c1, c2, rtol=1e-6)
    assert np.all(e1 > 0)
    np.testing.assert_allclose(e1, e2, rtol=1e-3)


def test_the_smallest_integral_sets_near_the_least_residual_go_to_the_refits():
    """Selection's own candidates (one best term set per size, samples `integral`): the three
    smallest whose residual is within twice the least go to the refits whatever their BIC;
    underfit sets, and rows of other samples, are not among them."""
    from sciml.distil._candidates import _knee_rows

    model = no_theory_model(["x", "y"])
    x, y = model.state_symbols
    forms = [x, x + y, x + y + x * y, x + y + x * y + x**2, x + y + x * y + x**2 + y**2]
    losses = [50.0, 1.3, 1.02, 1.01, 1.0]
    table = pd.DataFrame(
        {
            "state": "x",
            "samples": "integral",
            "loss": losses,
            "sympy_format": forms,
        }
    )
    table = pd.concat(
        [
            table,
            pd.DataFrame({"state": ["x"], "samples": ["data"], "loss": [0.1], "sympy_format": [y]}),
        ],
        ignore_index=True,
    )
    polys = {
        r: dict.fromkeys(sp.Poly(e, x, y).monoms(), 1.0)
        for r, e in enumerate(table["sympy_format"])
    }
    assert _knee_rows(table, "x", polys) == [1, 2, 3]
    assert _knee_rows(table, "y", polys) == []
    assert _knee_rows(table.drop(columns="samples"), "x", polys) == []
