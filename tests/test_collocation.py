"""The data-first pieces of discovery: smoothing-spline derivatives, integral-form scores,
selection on small exact problems, no-theory models. Fast unit tests (no UDE training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sympy as sp

import sciml
from sciml._model import no_theory_model
from sciml._smooth import smooth
from sciml.discover import load_inputs
from sciml.distil import select_and_refit
from sciml.distil._integral import IntegralView, polynomial_library


def logistic(t, x0=5.0, r=0.8, k=70.0):
    return k / (1 + (k / x0 - 1) * np.exp(-r * t))


def logistic_set(scale_y=1.0, scale_t=1.0, noise=0.0, n=120, seed=0):
    t = np.linspace(0, 10, n)
    y = logistic(t)
    rng = np.random.default_rng(seed)
    y = y * (1 + noise * rng.standard_normal(n))
    return sciml.from_arrays(["x"], [t * scale_t], [(y * scale_y)[:, None]])


def test_smoothed_derivative_follows_the_true_one_under_noise():
    data = logistic_set(noise=0.03)
    sm = smooth(data)
    t = data.trajectories[0].t
    r, k = 0.8, 70.0
    true = r * logistic(t) * (1 - logistic(t) / k)
    inner = sm.interior
    err = np.linalg.norm(sm.dydt[inner, 0] - true[inner]) / np.linalg.norm(true[inner])
    assert err < 0.1, err
    # The noise it implies is the noise put in (3% of the values, in the data's units).
    implied = sm.noise(data)[0]
    assert 0.5 < implied / (0.03 * np.mean(np.abs(logistic(t)))) < 1.5


def test_noise_weights_follow_the_noise_model_the_data_show():
    """Noise proportional to the value (here the logistic curve from 5 to 70): the weights
    fall as the value grows, about as 1/value; noise of one size: every weight near 1."""
    t = np.linspace(0, 10, 400)
    y = logistic(t)
    rng = np.random.default_rng(3)
    proportional = y * (1 + 0.05 * rng.standard_normal(len(t)))
    additive = y + 0.05 * np.mean(y) * rng.standard_normal(len(t))
    for values, kind in ((proportional, "proportional"), (additive, "additive")):
        data = sciml.from_arrays(["x"], [t], [values[:, None]])
        w = smooth(data).noise_weights(data)[:, 0]
        assert w.shape == (len(t),) and abs(w.mean() - 1) < 1e-9
        if kind == "proportional":
            small, large = w[y < 15].mean(), w[y > 60].mean()
            assert 2.5 < small / large < 10, (small, large)
        else:
            assert 0.75 < w.min() and w.max() < 1.3, (w.min(), w.max())


def test_smoothing_is_scale_free():
    """Rescaling time and states rescales the smoothed derivative and changes nothing else."""
    a = smooth(logistic_set(noise=0.03))
    b = smooth(logistic_set(scale_y=1e4, scale_t=1e-2, noise=0.03))
    np.testing.assert_allclose(b.y, 1e4 * a.y, rtol=1e-6)
    np.testing.assert_allclose(b.dydt, 1e4 / 1e-2 * a.dydt, rtol=1e-5, atol=1e-9)


def test_smoothing_keeps_fast_oscillations_noise_free_and_noisy():
    """A damped fast oscillation, many periods: the spline must follow it, not flatten it
    (scipy's generalised cross-validation returned a near-straight line on such series)."""
    t = np.linspace(0, 10, 512)
    y = np.exp(-0.1 * t) * np.sin(5 * t)
    true = np.exp(-0.1 * t) * (5 * np.cos(5 * t) - 0.1 * np.sin(5 * t))
    for noise, tolerance in ((0.0, 1e-3), (0.05, 0.15)):
        noisy = y + noise * np.std(y) * np.random.default_rng(1).standard_normal(len(t))
        sm = smooth(sciml.from_arrays(["x"], [t], [noisy[:, None]]))
        inner = sm.interior
        err = np.linalg.norm(sm.dydt[inner, 0] - true[inner]) / np.linalg.norm(true[inner])
        assert err < tolerance, (noise, err)
        # One radian of the oscillation: the characteristic time multiple shooting uses.
        assert 0.15 < sm.time_scale() < 0.25


def test_segments_cut_by_time_and_keep_every_point_once():
    t = np.linspace(0, 10, 101)
    data = sciml.from_arrays(["x"], [t, t[:9]], [np.sin(t)[:, None], np.sin(t[:9])[:, None]])
    shooting = data.segments(2.5)
    assert shooting.cut
    assert [len(tr.t) for tr in shooting.pieces.trajectories] == [25, 25, 25, 26, 9]
    assert list(shooting.first) == [0, 4]
    assert list(shooting.rows) == [0, 25, 50, 75, 101]
    pieces = shooting.pieces.trajectories
    np.testing.assert_array_equal(np.concatenate([tr.t for tr in pieces[:4]]), t)
    # Too short to cut (fewer than 8 points a piece), or an infinite horizon: unchanged.
    whole = data.segments(np.inf)
    assert not whole.cut
    assert [tr.name for tr in whole.pieces.trajectories] == data.names


def _view(data, model, mech_params=()):
    sm = smooth(data)
    return IntegralView.build(model, list(mech_params), data, sm, 2 * np.pi * sm.time_scale())


def test_integral_score_prefers_the_true_terms():
    data = logistic_set(noise=0.02)
    model = no_theory_model(["x"])
    view = _view(data, model)
    x = model.state_symbols[0]
    truth = view.score(0.8 * x - 0.0114 * x**2, 0)
    linear = view.score(0.5 * x, 0)
    spurious = view.score(0.8 * x - 0.0114 * x**2 + 1e-5 * x**3 + 0.01, 0)
    assert truth.bic < linear.bic
    assert truth.bic < spurious.bic  # two needless terms cost more than they explain
    assert truth.k == 2
    # Its least squares recover the rates from 2% noise without any derivative estimate.
    np.testing.assert_allclose(truth.coefficients, [0.8, -0.8 / 70], rtol=0.03)
    # A formula that cannot be evaluated on the data (log of negative states) is no candidate.
    assert view.score(sp.log(x - 1e6), 0) is None


def test_integrals_are_exact_for_smooth_states_on_few_points():
    """The Hermite quadrature between samples: on 21 noise-free points of the logistic curve
    the integral of r*x*(1 - x/K) from each piece's start matches x(t) - x(start) to 0.1%
    of the curve's range."""
    data = logistic_set(noise=0.0, n=21)
    model = no_theory_model(["x"])
    view = _view(data, model)
    x = model.state_symbols[0]
    integral = view.features([0.8 * x * (1 - x / 70.0)])[:, 0]
    values = data.trajectories[0].y[:, 0]
    starts = np.array([values[view.piece == p][0] for p in view.piece])
    assert np.max(np.abs(integral - (values - starts))) < 1e-3 * np.ptp(values)


def test_best_subsets_find_the_true_term_sets_under_noise():
    """Van der Pol with 5% multiplicative noise: among all term sets of its size from the
    cubic library (10 terms), the exhaustive integral-form search ranks each state's true set
    first, with coefficients within 10%."""
    from scipy.integrate import solve_ivp

    def field(t, z):
        u, v = z
        return [v, -u + (1 - u**2) * v]

    t = np.linspace(0, 20, 400)
    y = solve_ivp(field, (0, 20), [2.0, 0.0], t_eval=t, rtol=1e-10, atol=1e-12).y.T
    noisy = y * (1 + 0.05 * np.random.default_rng(4).standard_normal(y.shape))
    data = sciml.from_arrays(["u", "v"], [t], [noisy])
    model = no_theory_model(["u", "v"])
    view = _view(data, model)
    library = polynomial_library(model, 3)
    assert len(library) == 10
    u, v = model.state_symbols
    truth = {0: {v: 1.0}, 1: {u: -1.0, v: 1.0, u**2 * v: -1.0}}
    for state, want in truth.items():
        found = view.best_subsets(state, library, max_terms=3, per_size=1)
        subset, score = next((s, sc) for s, sc in found if len(s) == len(want))
        got = dict(zip([library[i] for i in subset], score.coefficients))
        assert set(got) == set(want), got
        for term, value in want.items():
            assert got[term] == pytest.approx(value, rel=0.1), (term, got)


def test_selection_recovers_an_exact_polynomial_from_sindy_candidates():
    from sciml.symbolic import SINDyEngine

    data = logistic_set(noise=0.0, n=60)
    model = no_theory_model(["x"])
    X, dydt = smooth(data).inner()
    engine = SINDyEngine(degree=3, n_bootstrap=0).fit(X, dydt[:, 0], feature_names=["x"])
    table = engine.equations_.copy()
    table.insert(0, "engine", "sindy")
    table.insert(0, "state", "x")
    selection = select_and_refit(model, [], table, data)
    kept = [t for t in selection.fitted_terms() if t.kept]
    x = model.state_symbols[0]
    assert {t.form for t in kept} == {x, x**2}, selection.equations()
    values = sorted(t.coefficient for t in kept)
    np.testing.assert_allclose(values, [-0.8 / 70.0, 0.8], rtol=1e-3)


def test_no_theory_model_has_a_residual_on_every_state(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"trajectory": [0] * 5, "t": range(5), "a": range(5), "S": range(5)}).to_csv(
        path, index=False
    )
    model, data = load_inputs(path, None)
    assert model.states == ("a", "S") and model.residual_states == ("a", "S")
    assert [str(e) for e in model.equations] == ["0", "0"]
    assert data.states == ("a", "S")


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"t": [0, 1], "bad name": [1, 2]}, "'bad name'"),
        ({"t": [0, 1], "exp": [1, 2]}, "'exp'"),
        ({"time": [0, 1], "x": [1, 2]}, "no time column 't'"),
        ({"t": [0, 1], "trajectory": [0, 0]}, "no state columns"),
    ],
)
def test_no_theory_refuses_columns_that_cannot_be_states(tmp_path, columns, message):
    path = tmp_path / "d.csv"
    pd.DataFrame(columns).to_csv(path, index=False)
    with pytest.raises(sciml.DataError, match=message) as info:
        load_inputs(path, None)
    assert str(path) in str(info.value)


def test_cli_without_a_model_refuses_a_column_that_cannot_be_a_state(tmp_path, capsys):
    """`sciml discover DATA --out DIR` (no --model) means no theory; a column that cannot name
    a state is refused before anything starts, with exit 2 and the column named."""
    from pipelines.cli import main

    path = tmp_path / "d.csv"
    pd.DataFrame({"t": [0.0, 1.0, 2.0], "x": [1.0, 2.0, 3.0], "sin": [0.0, 1.0, 0.0]}).to_csv(
        path, index=False
    )
    code = main(["discover", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "'sin'" in err and str(path) in err
    assert not (tmp_path / "out" / "discovered.json").exists()
