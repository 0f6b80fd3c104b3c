"""Partial observation (docs/partial-observation.md): unmeasured states, gaps, observation
equations, fitted unmeasured initial values, identifiability; the UDE's bounds and masked loss.

The discoveries on the generated SEIR and food-chain data take minutes: bench/partial.py.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.integrate import solve_ivp

import sciml
from data.food_chain import generate as food_chain
from pipelines.cli import main
from sciml._errors import ModelFileError
from sciml._identify import identifiability
from sciml._mechanistic import fit_mechanistic
from sciml._model import model_from_dict
from sciml._ude import UDEConfig, estimate_states, init_ude, train_ude

# -- the model file ------------------------------------------------------------------------------
BASE = {
    "model": {
        "states": ["x", "y"],
        "parameters": {"k": 1.0},
        "equations": {"x": "-k*x*y", "y": "-y"},
    }
}


def _with(**sections):
    return {**BASE, **sections}


def test_observed_and_initial_sections_parse():
    model = model_from_dict(
        _with(
            observed={"states": ["x"], "equations": {"total": "x + 2*y"}},
            initial={"y": {"value": 0.5, "min": 0, "max": 2}},
        )
    )
    assert model.measured_states == ("x",)
    assert model.observables == ("total",)
    assert model.partial
    assert model.initial_guess("y") == (0.5, 0.0, 2.0, False)
    values = model.channels(0.0, jnp.asarray([1.0, 3.0]), jnp.asarray([1.0]))
    np.testing.assert_allclose(values, [1.0, 3.0, 7.0])
    assert not model_from_dict(BASE).partial


BAD_SECTIONS = {
    "unknown_key": ({"observed": {"state": ["x"]}}, "observed: unknown key(s) ['state']"),
    "not_a_state": ({"observed": {"states": ["q"]}}, "observed.states: 'q' is not a state"),
    "nothing": ({"observed": {}}, "observed: measures nothing"),
    "syntax": (
        {"observed": {"equations": {"cases": "rho*"}}},
        "observed.equations.cases: syntax error",
    ),
    "unknown_symbol": (
        {"observed": {"equations": {"cases": "rho*y"}}},
        "observed.equations.cases: unknown symbol 'rho'",
    ),
    "no_state": ({"observed": {"equations": {"c": "2*k"}}}, "observed.equations.c: '2*k' does"),
    "clash": ({"observed": {"equations": {"k": "x"}}}, "observed.equations.k: the name is"),
    "initial_measured": (
        {"observed": {"states": ["x"]}, "initial": {"x": 1.0}},
        "initial.x: 'x' is measured",
    ),
    "initial_bounds": (
        {"observed": {"states": ["x"]}, "initial": {"y": {"value": 5, "max": 1}}},
        "initial.y.value: 5 is outside",
    ),
    "initial_key": (
        {"observed": {"states": ["x"]}, "initial": {"y": {"value": 1, "prior": 2}}},
        "initial.y: an initial value takes `value`",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SECTIONS))
def test_bad_observation_declarations_name_the_key(case):
    sections, fragment = BAD_SECTIONS[case]
    with pytest.raises(ModelFileError) as err:
        model_from_dict(_with(**sections), source="m.toml")
    assert fragment in str(err.value), str(err.value)


def test_bad_observation_equation_exits_2(tmp_path, capsys):
    model = tmp_path / "m.toml"
    model.write_text(
        '[model]\nstates = ["x"]\n[model.equations]\nx = "-x"\n'
        '[observed.equations]\ncases = "import(x)"\n'
    )
    data = tmp_path / "d.csv"
    data.write_text("t,cases\n0,1\n1,2\n2,3\n")
    code = main(["discover", str(data), "--model", str(model), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "observed.equations.cases" in err
    assert not (tmp_path / "o" / "discovered.json").exists()


# -- data ----------------------------------------------------------------------------------------
def test_gaps_and_unmeasured_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("t,x,cases\n0,1,\n1,,5\n2,3,NaN\n3,4,7\n")
    data = sciml.load_trajectories(path, ["x", "y"], measured=["x"], observables=["cases"])
    (tr,) = data.trajectories
    assert data.partial and data.channels == ("x", "y", "cases")
    np.testing.assert_array_equal(
        tr.observed, [[1, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 1]]
    )  # (x, y, cases) per row
    assert tr.y[1, 0] == 2.0  # the gap in x interpolated as its estimate
    assert np.isnan(tr.y[:, 1]).all()  # y has no estimate until a model gives one
    assert data.unmeasured().tolist() == [[False, True]]
    values, mask = data.padded_channels()
    assert mask.sum() == 5 and values[0, 1, 2] == 5.0
    # the split and the shooting pieces keep the mask with the values
    train, test = data.split_time(0.5)
    assert train.trajectories[0].observed.shape == (2, 3)
    assert test.trajectories[0].observed.tolist() == [[1, 0, 0], [1, 0, 1]]


def test_undeclared_missing_column_points_to_observed(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("t,x\n0,1\n1,2\n2,3\n")
    with pytest.raises(sciml.DataError, match=r"missing column\(s\) \['y'\].*\[observed\]"):
        sciml.load_trajectories(path, ["x", "y"])
    with pytest.raises(sciml.DataError, match=r"missing column\(s\) \['cases'\]"):
        sciml.load_trajectories(path, ["x", "y"], measured=["x"], observables=["cases"])


# -- fits ----------------------------------------------------------------------------------------
def _decay_data(y0=2.0, b=0.7, *, noise=0.01, seed=0):
    """x' = -b x y, y' = -0.5 y: x measured, y not (it only shows through x)."""

    def field(t, u):
        return [-b * u[0] * u[1], -0.5 * u[1]]

    t = np.linspace(0, 6, 31)
    sol = solve_ivp(field, (0, 6), [3.0, y0], t_eval=t, rtol=1e-10, atol=1e-12).y.T
    rng = np.random.default_rng(seed)
    x = sol[:, 0] * (1 + noise * rng.standard_normal(len(t)))
    return sciml.from_arrays(["x", "y"], [t], [np.stack([x, np.full_like(x, np.nan)], 1)])


def _decay_model(**initial):
    return model_from_dict(
        {
            "model": {
                "states": ["x", "y"],
                "parameters": {"b": {"value": 0.3, "min": 0}},
                "equations": {"x": "-b*x*y", "y": "-0.5*y"},
            },
            "observed": {"states": ["x"]},
            "initial": initial,
        }
    )


def test_scale_of_an_unmeasured_state_is_flagged_or_pinned():
    """x' = -b x y with y unmeasured: only b * y0 is determined. With y's initial value free,
    the fit cannot split it and identifiability says so; with it known, b is recovered."""
    data = _decay_data()
    free = _decay_model(y={"value": 1.0, "min": 0})
    fit = fit_mechanistic(free, data, key=jax.random.key(0), n_starts=1)
    b, y0 = fit.params[0], fit.y0[0, 1]
    assert abs(b * y0 - 0.7 * 2.0) < 0.05  # the product is determined
    report = identifiability(free, fit.params, fit.y0, data)
    assert report["parameters"]["b"]["status"] != "determined"
    assert report["initial"]["0"]["y"]["status"] != "determined"
    assert set(report["weakest_direction"]["combination"]) == {"b", "y(t0) of '0'"}

    pinned = _decay_model(y={"value": 2.0, "fixed": True})
    fit = fit_mechanistic(pinned, data, key=jax.random.key(0), n_starts=1)
    assert fit.y0[0, 1] == 2.0
    assert abs(fit.params[0] - 0.7) < 0.03
    report = identifiability(pinned, fit.params, fit.y0, data)
    assert report["parameters"]["b"]["status"] == "determined"
    assert report["initial"] == {}  # a known initial value is not a fitted quantity


def test_fitted_unmeasured_initial_value_food_chain():
    """The whole food chain with the consumer y unmeasured (its scale fixed by its known
    initial value): the rates of all three equations from x and z alone."""
    model = sciml.load_model("data/food_chain/model_full.toml")
    model = dataclasses.replace(model, initial=(("y", 0.5, 0.0, np.inf, True),))
    data = sciml.load_trajectories(
        "data/food_chain/food_chain.csv", model.states, measured=model.measured_states
    )
    fit = fit_mechanistic(model, data, key=jax.random.key(0), n_starts=2)
    true = food_chain.TRUE
    for name in ("b", "c", "d", "e", "f", "g"):
        assert abs(fit.parameter_dict[name] / true[name] - 1) < 0.1, (name, fit.parameter_dict)
    assert np.isnan(fit.rmse[1]) and fit.rmse[0] < 0.1 and fit.rmse[2] < 0.06
    # the unmeasured consumer, as the fit estimates it, follows the true one
    est = estimate_states(fit, data)
    for tr, u0 in zip(est.trajectories, food_chain.STARTS.values(), strict=True):
        truth = food_chain.simulate(tr.t, u0)[:, 1]
        assert np.max(np.abs(tr.y[:, 1] - truth)) < 0.1 * truth.max()


def _logistic_cases(r=0.8, x0=0.05, rho=200.0, seed=0):
    t = np.linspace(0, 10, 21)
    x = x0 * np.exp(r * t) / (1 - x0 + x0 * np.exp(r * t))
    rng = np.random.default_rng(seed)
    counts = rho * r * x * (1 - x) * np.exp(0.03 * rng.standard_normal(len(t)))
    return t, counts


def test_observation_equation_parameters_fitted():
    """Nothing measured but incidence `rho * r * x * (1 - x)` of a logistic epidemic: r, rho
    and the initial value x0 are all fitted from it."""
    t, counts = _logistic_cases()
    model = model_from_dict(
        {
            "model": {
                "states": ["x"],
                "parameters": {"r": {"value": 0.3, "min": 0}, "rho": {"value": 50, "min": 0}},
                "equations": {"x": "r*x*(1 - x)"},
            },
            "observed": {"equations": {"cases": "rho*r*x*(1 - x)"}},
            "initial": {"x": {"value": 0.2, "min": 0, "max": 1}},
        }
    )
    data = sciml.from_arrays(
        ["x"], [t], [np.full((len(t), 1), np.nan)], observables=["cases"], obs=[counts[:, None]]
    )
    fit = fit_mechanistic(model, data, key=jax.random.key(0), n_starts=3)
    np.testing.assert_allclose(fit.params, [0.8, 200.0], rtol=0.05)
    assert abs(fit.y0[0, 0] / 0.05 - 1) < 0.1
    report = identifiability(model, fit.params, fit.y0, data)
    assert report["parameters"]["rho"]["status"] == "determined"
    # the run's metrics: RMSE of the measured column, none for the state never measured
    from sciml.discover import DiscoveryConfig, evaluation_stage

    metrics, _ = evaluation_stage(model, fit, None, None, data, None, DiscoveryConfig())
    assert np.isnan(metrics["mechanistic_rmse"]["x"])
    assert 0 < metrics["mechanistic_rmse"]["cases"] < 0.05 * counts.max()
    assert metrics["extrapolation_bounded"]["mechanistic"]


def test_states_measured_at_different_times():
    """Lotka–Volterra with x measured at even samples and y at odd ones (long form, NaN where
    not measured): every rate recovered."""
    from data.lotka_volterra import generate as lv

    t = np.linspace(0, 5, 41)
    ys = lv.noisy(t, noise=0.02, seed=1)
    ys[1::2, 0] = np.nan
    ys[0::2, 1] = np.nan
    data = sciml.from_arrays(["x", "y"], [t], [ys])
    assert data.partial and not data.unmeasured().any()
    model = sciml.load_model("data/lotka_volterra/model_full.toml")
    fit = fit_mechanistic(model, data, key=jax.random.key(0), n_starts=2)
    np.testing.assert_allclose(fit.params, [1.3, 0.9, 0.8, 1.8], rtol=0.05)


# -- UDE -----------------------------------------------------------------------------------------
TINY = UDEConfig(
    width=8, collocation_steps=25, windows=(1.0,), adam_steps=25, lbfgs_steps=0, chunk=25
)
ADAM = optax.adam(3e-3)  # one optimiser object: trainings of the same shapes compile once


def test_ude_loss_sees_only_measured_values():
    """Values not measured do not move the UDE: the same data with other numbers in the
    unmeasured cells train to the same network."""
    data = _decay_data()
    model = dataclasses.replace(
        _decay_model(y={"value": 2.0, "fixed": True}), residual_states=("x",)
    )
    fit = fit_mechanistic(model, data, key=jax.random.key(0), n_starts=1)
    other = dataclasses.replace(
        data,
        trajectories=tuple(
            dataclasses.replace(tr, y=np.where(tr.observed, tr.y, 1e3)) for tr in data.trajectories
        ),
    )
    a = train_ude(fit, data, key=jax.random.key(1), config=TINY, optimizer=ADAM)
    b = train_ude(fit, other, key=jax.random.key(1), config=TINY, optimizer=ADAM)
    la, lb = (jax.tree.leaves(eqx_filter(t.ude)) for t in (a, b))
    for u, v in zip(la, lb, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-9)
    assert a.y0[0, 1] == 2.0  # the known initial value stays known


def test_masked_residuals_ignore_what_was_not_measured():
    from sciml._mechanistic import channel_residuals

    model = _decay_model(y=1.0)
    ts = jnp.zeros((1, 2))
    pred = jnp.asarray([[[1.0, 5.0], [2.0, 6.0]]])
    values = jnp.asarray([[[1.5, jnp.nan], [jnp.inf, 6.0]]])
    mask = jnp.asarray([[[1.0, 0.0], [0.0, 1.0]]])
    r = channel_residuals(model, jnp.asarray([0.7]), ts, pred, values, mask, jnp.ones(2))
    np.testing.assert_array_equal(r, [[[-0.5, 0.0], [0.0, 0.0]]])
    # the gradient never sees the unmeasured entries either
    g = jax.grad(
        lambda p: jnp.sum(channel_residuals(model, jnp.asarray([0.7]), ts, p, values, mask, 1.0))
    )(pred)
    np.testing.assert_array_equal(g, [[[1.0, 0.0], [0.0, 1.0]]])


def eqx_filter(tree):
    import equinox as eqx

    return eqx.filter(tree, eqx.is_inexact_array)


def test_ude_keeps_declared_bounds_and_says_what_to_try():
    """Issue 15: a parameter with declared bounds stays within them in UDE training (the
    network would otherwise pull it out: here the truth, 1.3, is above the bound); and a
    training that ends non-finite says what to try, like the mechanistic fit."""
    from data.lotka_volterra import generate as lv

    t = np.linspace(0, 5, 21)
    data = sciml.from_arrays(["x", "y"], [t], [lv.noisy(t, seed=5)])
    model = model_from_dict(
        {
            "model": {
                "states": ["x", "y"],
                "parameters": {
                    "alpha": {"value": 0.9, "min": 0.5, "max": 1.0},
                    "delta": {"value": 1.8, "fixed": True},
                },
                "equations": {"x": "alpha*x", "y": "-delta*y"},
            },
            "residual": {"states": ["x", "y"]},
        }
    )
    ude = init_ude(model, [0.7, 1.8], data, key=jax.random.key(0))
    np.testing.assert_allclose(ude.mechanistic_params(), [0.7, 1.8])
    fit = fit_mechanistic(model, data, key=jax.random.key(0), n_starts=1)
    trained = train_ude(fit, data, key=jax.random.key(1), config=TINY, optimizer=ADAM)
    alpha = float(trained.ude.mechanistic_params()[0])
    assert 0.5 <= alpha <= 1.0

    broken = dataclasses.replace(fit, params=np.array([np.nan, 1.8]))
    with pytest.raises(sciml.NumericalError, match=r"\[ude\].*; try .*bounds"):
        train_ude(broken, data, key=jax.random.key(1), config=TINY, optimizer=ADAM)


def test_ensemble_is_refused_on_partial_data(tmp_path):
    from sciml._errors import InputError
    from sciml.discover import run_discovery

    with pytest.raises(InputError, match="--ensemble is not available"):
        run_discovery(
            "data/food_chain/food_chain.csv",
            "data/food_chain/model.toml",
            tmp_path / "out",
            ensemble=2,
            show_progress=False,
        )
    assert not (tmp_path / "out" / "discovered.json").exists()


# -- the selection's refit with unmeasured states ------------------------------------------------
def _epidemic(k=2.0, s0=1.0, seed=0):
    """dS/dt = -k S E, dE/dt = k S E - E; only E measured (2% noise), S's start unknown."""
    t = np.linspace(0, 12, 41)
    sol = solve_ivp(
        lambda _, u: [-k * u[0] * u[1], k * u[0] * u[1] - u[1]],
        (0, 12),
        [s0, 0.01],
        t_eval=t,
        rtol=1e-10,
        atol=1e-12,
    )
    rng = np.random.default_rng(seed)
    e = sol.y[1] * (1 + 0.02 * rng.standard_normal(len(t)))
    model = model_from_dict(
        {
            "model": {
                "states": ["S", "E"],
                "parameters": {"k": {"value": 1.2, "min": 0}},
                "equations": {"S": "-k*S*E", "E": "k*S*E"},
            },
            "residual": {"states": ["E"]},
            "observed": {"states": ["E"]},
            "initial": {"S": {"value": 0.5, "min": 0, "max": 5}},
        }
    )
    ys = np.stack([np.full_like(t, np.nan), e], axis=1)
    return model, sciml.from_arrays(["S", "E"], [t], [ys])


def test_shared_theory_parameter_is_tied_in_the_term_model():
    from sciml.distil import build_term_model

    model, _ = _epidemic()
    S, E = (model.symbol_table()[s] for s in ("S", "E"))
    tm = build_term_model(model, [0.3], {"E": -0.5 * E})
    forms = [(t.state, str(t.form)) for t in tm.terms]
    assert forms == [("S", "E*S"), ("E", "E*S"), ("E", "E")]
    index = tm.coefficient_index()
    assert tm.ties == ((int(index[1]), int(index[0]), -1.0),)
    # a formula that adds to the theory's term unties it: its coefficient is the data's to set
    assert build_term_model(model, [0.3], {"E": 0.1 * S * E - 0.5 * E}).ties == ()


def test_refit_with_an_unmeasured_state_keeps_ties_and_initial_bounds():
    """Only E is measured: untied, the rate in dE/dt trades off against the unmeasured S's scale
    (its initial value); tied to dS/dt's rate, the rate, the missing term and S's initial value
    are all determined, the latter within its bounds."""
    from sciml.distil import Refitter, build_term_model

    model, data = _epidemic()
    E = model.symbol_table()["E"]
    tm = build_term_model(model, [1.2], {"E": -0.5 * E})
    fit = fit_mechanistic(model, data, key=jax.random.key(0), n_starts=1)
    refit = Refitter(tm, estimate_states(fit, data)).fit([True] * 3)
    c = tm.coefficients(refit.params)
    assert c[1] == -c[0]  # the tie holds exactly
    # within their standard errors of the truth, which count S's fitted start (correlated
    # with the rate; without it they were 30 times smaller than the error)
    se = tm.coefficients(refit.stderr)
    assert np.all(se < 0.1 * np.abs(c)), se
    assert np.all(np.abs(c - [-2.0, 2.0, -1.0]) < 4 * se), (c, se)
    assert 0.0 <= refit.y0[0, 0] <= 5.0 and abs(refit.y0[0, 0] - 1.0) < 0.2
    assert refit.k == 2 + 2  # the rate (tied: one unknown), the missing term, two starts


# -- selection with unmeasured states: only coefficients the data determine ----------------------
class _TableRefitter:
    """A refitter stub: each mask's refit is looked up (BIC and standard errors chosen so that
    the BIC alone keeps a term the data do not determine)."""

    def __init__(self, fits, *, unmeasured):
        self.fits, self.unmeasured = fits, unmeasured

    def fit(self, mask, start=None, y0=None):
        return self.fits[tuple(mask)]


# term order of the stub's model: dS/dt's -k*E*S, dE/dt's k*E*S, then the discovered S and E
ALL, NO_S, NO_E = (True,) * 4, (True, True, False, True), (True, True, True, False)


def _stub_selection(unmeasured):
    from sciml.distil import build_term_model
    from sciml.distil._refit import Refit

    model, _ = _epidemic()
    S, E = (model.symbol_table()[s] for s in ("S", "E"))
    tm = build_term_model(model, [2.0], {"E": -1.0 * E + 0.3 * S})
    assert [str(t.form) for t in tm.terms] == ["E*S", "E*S", "S", "E"]

    def refit(coefs, stderrs, bic):
        params = tm.with_coefficients(np.zeros(len(tm.model.parameters)), coefs)
        stderr = tm.with_coefficients(np.zeros(len(tm.model.parameters)), stderrs)
        sse = 40 * np.exp((bic - 3 * np.log(40)) / 40)  # so that `Refit.bic` is `bic`
        return Refit(params, stderr, np.ones((1, 2)), sse, 40, 3, True)

    fits = {
        # both discovered terms on: S's standard error is twice its coefficient
        ALL: refit([-2.0, 2.0, 0.3, -1.0], [0.1, 0.1, 0.6, 0.05], -200.0),
        # without S: a worse BIC (the BIC alone keeps S), E's coefficient determined
        NO_S: refit([-2.0, 2.0, 0.0, -0.9], [0.1, 0.1, 0.0, 0.05], -190.0),
        NO_E: refit([-2.0, 2.0, 0.2, 0.0], [0.1, 0.1, 0.1, 0.0], -150.0),
        (True, True, False, False): refit([-2.0, 2.0, 0.0, 0.0], [0.1, 0.1, 0.0, 0.0], -100.0),
    }
    return tm, _TableRefitter(fits, unmeasured=unmeasured), fits


def test_undetermined_terms_are_the_discovered_ones_least_determined_first():
    from sciml.distil._refit import undetermined_terms

    tm, _, fits = _stub_selection(True)
    assert undetermined_terms(tm, fits[ALL], ALL) == [2]  # S: 0.6 / 0.3 = 2 > 1
    assert undetermined_terms(tm, fits[ALL], NO_S) == []  # switched off
    # relative standard errors 200 (S) and 5 (E); the theory's terms (5 each) never count
    worse = dataclasses.replace(fits[ALL], stderr=fits[ALL].stderr * 100)
    assert undetermined_terms(tm, worse, ALL) == [2, 3]
    assert undetermined_terms(tm, dataclasses.replace(worse, params=worse.params * 0), ALL) == [
        2,
        3,
    ]  # a coefficient of 0 has no relative error: not determined


@pytest.mark.parametrize("unmeasured", [True, False])
def test_pruning_drops_an_undetermined_term_only_where_states_are_unmeasured(unmeasured):
    from sciml.distil import prune_terms

    tm, refitter, fits = _stub_selection(unmeasured)
    fit, mask, removed = prune_terms(tm, refitter, fits[ALL], ALL)
    if unmeasured:  # removed whatever the BIC (-200 -> -190), and said why
        assert tuple(mask) == NO_S and fit is fits[NO_S]
        assert [(r["term"], r["reason"]) for r in removed] == [
            ("S", "not determined (standard error 0.6)")
        ]
    else:  # every state measured: the BIC decides, and it keeps the term
        assert tuple(mask) == ALL and removed == []


def test_candidates_are_compared_by_what_the_data_determine_of_them():
    """A wide candidate holding the right terms beside an undetermined one keeps its chance:
    the undetermined term is removed and the rest refit before any comparison."""
    from sciml.distil._candidates import Candidate

    for unmeasured in (True, False):
        tm, refitter, fits = _stub_selection(unmeasured)
        part = Candidate({}, "polynomial", tm, refitter, ALL, fits[ALL]).determined_part()
        assert part.mask == (NO_S if unmeasured else ALL)
        assert part.refit is fits[part.mask] and part.determined


def test_a_determined_candidate_beats_a_better_bic_only_where_states_are_unmeasured():
    from sciml.distil._candidates import Candidate

    for unmeasured in (True, False):
        tm, refitter, fits = _stub_selection(unmeasured)
        wide = Candidate({}, "polynomial", tm, refitter, ALL, fits[ALL])
        right = Candidate({}, "polynomial", tm, refitter, NO_S, fits[NO_S])
        assert wide.determined is not unmeasured and right.determined
        assert right.beats(wide) is unmeasured and wide.beats(right) is not unmeasured
