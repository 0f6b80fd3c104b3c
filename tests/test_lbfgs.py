"""The UDE's L-BFGS polish: a value-only backtracking line search over the two-loop recursion."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import sciml  # noqa: F401 - float64
from sciml._ude import _lbfgs_step, lbfgs_init


def _minimise(loss, x0, steps):
    state = lbfgs_init({"x": x0})
    _, unravel = ravel_pytree({"x": x0})

    @jax.jit
    def run(state):
        def step(st, _):
            return jax.lax.cond(
                st.stuck, lambda s: (s, s.value), lambda s: _lbfgs_step(loss, unravel, s, 20), st
            )

        return jax.lax.scan(step, state, None, length=steps)

    return run(state)


def test_lbfgs_reaches_the_rosenbrock_minimum():
    def rosenbrock(p):
        x = p["x"]
        return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    state, values = _minimise(rosenbrock, jnp.array([-1.2, 1.0, -0.5, 0.8]), 200)
    values = np.asarray(values)
    assert np.all(np.diff(values) <= 1e-12), "the loss never goes up"
    np.testing.assert_allclose(np.asarray(state.x), 1.0, atol=1e-5)


def test_lbfgs_stops_where_no_step_lowers_the_loss_and_ignores_failed_regions():
    """A loss that is inf past x = 2 (a failed ODE solve): the search backs off from it; at
    the minimum the method marks itself stuck and keeps the point."""

    def loss(p):
        x = p["x"]
        return jnp.where(x[0] > 2.0, jnp.inf, jnp.sum((x - 1.5) ** 2))

    state, values = _minimise(loss, jnp.array([-3.0, 0.0]), 60)
    np.testing.assert_allclose(np.asarray(state.x), 1.5, atol=1e-6)
    assert bool(state.stuck) and np.isfinite(np.asarray(values)).all()
