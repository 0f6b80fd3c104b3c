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
    with pytest.raises(sciml.NumericalError, match=r"\[mechanistic\] trajectory 'run7'"):
        sciml.fit_mechanistic(model, data, key=jax.random.key(0), fit_initial_state=False)
