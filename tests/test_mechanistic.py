"""Mechanistic fit: poor guesses, several trajectories with different starts, irregular times."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import sciml
from data.lotka_volterra import generate as lv

TRUE = np.array([1.3, 0.9, 0.8, 1.8])


def test_bundled_full_model_from_guesses_off_by_2x():
    model = sciml.load_model("data/lotka_volterra/model_full.toml")
    guesses = np.asarray(model.guesses)
    assert np.all(np.maximum(guesses / TRUE, TRUE / guesses) >= 1.9)  # really off by ~2x
    data = sciml.load_trajectories("data/lotka_volterra/lotka_volterra.csv", model.states)
    fit = sciml.fit_mechanistic(model, data, key=jax.random.key(0))
    np.testing.assert_allclose(fit.params, TRUE, rtol=0.05)
    assert np.all(fit.rmse < 0.15)  # about the noise level (sigma ~ 0.05 * mean |state|)


def test_many_trajectories_irregular_times():
    rng = np.random.default_rng(3)
    ts, ys = [], []
    for x0 in [(0.5, 4.0), (2.0, 1.0), (1.0, 2.5)]:
        t = np.sort(np.concatenate([[0.0], rng.uniform(0.05, 4.0, 14)]))
        ts.append(t)
        ys.append(lv.noisy(t, x0, noise=0.02, seed=int(rng.integers(1000))))
    data = sciml.from_arrays(["x", "y"], ts, ys, names=["a", "b", "c"])
    model = sciml.load_model("data/lotka_volterra/model_full.toml")
    fit = sciml.fit_mechanistic(model, data, key=jax.random.key(1))
    np.testing.assert_allclose(fit.params, TRUE, rtol=0.05)
    assert fit.y0.shape == (3, 2)


def test_fixed_parameters_stay_fixed():
    model = sciml.load_model("data/lotka_volterra/model.toml")
    assert model.fixed == (True, True)
    data = sciml.load_trajectories("data/lotka_volterra/lotka_volterra.csv", model.states)
    fit = sciml.fit_mechanistic(model, data, key=jax.random.key(0))
    assert fit.parameter_dict == {"alpha": 1.3, "delta": 1.8}


def test_guesses_ten_times_too_large_still_reach_the_rates():
    """The start fitted to the data's smoothed derivatives (no ODE solve) does not depend on
    the guesses: 10x too large (the model blows up with them) is fine."""
    doc = {
        "model": {
            "states": ["x", "y"],
            "parameters": dict(zip(["alpha", "beta", "gamma", "delta"], 10 * TRUE)),
            "equations": {"x": "alpha*x - beta*x*y", "y": "gamma*x*y - delta*y"},
        }
    }
    model = sciml.model_from_dict(doc)
    data = sciml.load_trajectories("data/lotka_volterra/lotka_volterra.csv", model.states)
    fit = sciml.fit_mechanistic(model, data, key=jax.random.key(0), n_starts=2)
    np.testing.assert_allclose(fit.params, TRUE, rtol=0.05)


def test_a_model_that_blows_up_with_its_guess_is_steered_away():
    model = sciml.model_from_dict(
        {
            "model": {
                "states": ["x"],
                "parameters": {"k": 5.0},
                "equations": {"x": "k*x^2"},  # blows up in finite time from x0 = 1
            }
        }
    )
    t = np.linspace(0, 2, 10)
    data = sciml.from_arrays(["x"], [t], [np.ones_like(t)])
    # The data are flat: the collocation start puts k near 0, where the model integrates.
    fit = sciml.fit_mechanistic(model, data, key=jax.random.key(0), n_starts=2)
    assert np.all(np.isfinite(fit.params)) and abs(fit.params[0]) < 0.05


def test_all_starts_failing_raises_numerical_error():
    model = sciml.model_from_dict(
        {"model": {"states": ["x"], "parameters": {}, "equations": {"x": "x^2"}}}
    )
    t = np.linspace(0, 3, 10)  # x' = x^2 from x0 = 1 blows up at t = 1
    data = sciml.from_arrays(["x"], [t], [np.ones_like(t)], names=["run7"])
    # Reported with the stage and trajectory, never returned as NaN.
    with pytest.raises(sciml.NumericalError, match=r"\[mechanistic\] trajectory .run7.*; try "):
        sciml.fit_mechanistic(model, data, key=jax.random.key(0), fit_initial_state=False)


LV_DOC = {
    "states": ["x", "y"],
    "equations": {"x": "alpha*x - beta*x*y", "y": "gamma*x*y - delta*y"},
}
NAMES = ["alpha", "beta", "gamma", "delta"]


@pytest.mark.parametrize(
    "guesses",
    [-TRUE, 100 * TRUE, np.array([-1.3, 0.0, 80.0, 0.018])],
    ids=["negative", "100x", "mixed-zero-and-hundredth"],
)
def test_zero_negative_and_100x_wrong_guesses_reach_the_rates(guesses):
    model = sciml.model_from_dict(
        {"model": {**LV_DOC, "parameters": dict(zip(NAMES, guesses.tolist()))}}
    )
    data = sciml.load_trajectories("data/lotka_volterra/lotka_volterra.csv", model.states)
    fit = sciml.fit_mechanistic(model, data, key=jax.random.key(0), n_starts=2)
    np.testing.assert_allclose(fit.params, TRUE, rtol=0.05)


def test_wrong_sign_guess_without_the_derivative_start(monkeypatch):
    """The sign of a guess is not a constraint: the fit through the ODE alone crosses zero."""
    from sciml import _mechanistic

    monkeypatch.setattr(_mechanistic, "_collocation_start", lambda *args: None)
    params = dict(zip(NAMES, [-1.0, 0.45, 1.6, 0.9]))
    model = sciml.model_from_dict({"model": {**LV_DOC, "parameters": params}})
    data = sciml.load_trajectories("data/lotka_volterra/lotka_volterra.csv", model.states)
    fit = sciml.fit_mechanistic(model, data, key=jax.random.key(0), n_starts=2)
    np.testing.assert_allclose(fit.params, TRUE, rtol=0.05)


def test_declared_bounds_are_respected():
    params = {
        "alpha": {"value": 0.5, "min": 0.2, "max": 1.0},  # the true 1.3 lies outside
        "beta": {"value": 0.5, "min": 0.0},
        "gamma": {"value": 0.5, "max": 5.0},
        "delta": 1.0,
    }
    model = sciml.model_from_dict({"model": {**LV_DOC, "parameters": params}})
    assert model.parameter_bounds[0] == (0.2, 1.0) and model.parameter_bounds[3][0] == -np.inf
    data = sciml.load_trajectories("data/lotka_volterra/lotka_volterra.csv", model.states)
    fit = sciml.fit_mechanistic(model, data, key=jax.random.key(0), n_starts=2)
    alpha, beta, gamma, _ = fit.params
    assert 0.2 <= alpha <= 1.0 and alpha > 0.9  # pressed against the bound it cannot cross
    assert beta >= 0.0 and gamma <= 5.0


def test_transform_maps_every_z_inside_the_bounds():
    from sciml._mechanistic import ParameterTransform

    lower = np.array([-np.inf, 0.0, -np.inf, -1.0])
    upper = np.array([np.inf, np.inf, 2.0, 3.0])
    tr = ParameterTransform.make(np.array([-4.0, 0.0, 2.0, 1.0]), lower, upper)
    z = np.linspace(-40, 40, 161)[:, None] * np.ones(4)
    p = np.asarray(jax.vmap(tr.to_p)(z))
    assert np.all(p >= lower) and np.all(p <= upper) and np.all(np.isfinite(p))
    assert p[:, 0].min() < 0 < p[:, 0].max()  # unbounded: both signs reachable
    back = np.asarray(tr.to_p(tr.to_z(np.array([-4.0, 0.5, 1.5, 1.0]))))
    np.testing.assert_allclose(back, [-4.0, 0.5, 1.5, 1.0], rtol=1e-9)


def test_a_model_that_blows_up_at_every_start_is_steered_by_growing_windows(monkeypatch):
    """x' = a x^2 blows up at t = 1/a from x0 = 1. Data from a = 0.5 on [0, 1.8]; every start
    (a between 2 and 8) blows up before the data end, and no derivative start helps here."""
    from sciml import _mechanistic

    monkeypatch.setattr(_mechanistic, "_collocation_start", lambda *args: None)
    model = sciml.model_from_dict(
        {
            "model": {
                "states": ["x"],
                "parameters": {"a": {"value": 5.0, "min": 0.3, "max": 10.0}},
                "equations": {"x": "a*x^2"},
            }
        }
    )
    t = np.linspace(0, 1.8, 15)
    data = sciml.from_arrays(["x"], [t], [(1 / (1 - 0.5 * t))[:, None]])
    fit = sciml.fit_mechanistic(
        model, data, key=jax.random.key(0), n_starts=3, spread=0.3, fit_initial_state=False
    )
    assert "steered" in fit.message
    np.testing.assert_allclose(fit.params, [0.5], rtol=0.01)
