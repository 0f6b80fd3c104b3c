"""The continuous normalising flow: a time-conditioned vector field and its augmented solves.

`dy/dt = f(t, y)` carries a standard Gaussian at `t = 0` to the data at `t = t1`. The
log-density of a data point `x` follows from one backward solve of the augmented system

    dy/dt = f(t, y),   d(delta)/dt = tr(df/dy),   y(t1) = x,   delta(t1) = 0,

as `log p(x) = log N(y(0); 0, I) + delta(0)` (the instantaneous change of variables). The trace
is computed exactly (one Jacobian-vector product per dimension) or estimated with Hutchinson's
estimator `eps^T (df/dy) eps` (one vector-Jacobian product, noise fixed along a solve). The
same solve can integrate the RNODE regularisers: kinetic energy `|f|^2` and the Jacobian's
Frobenius norm `|df/dy|_F^2`, which make the learnt dynamics easy to integrate.

All samples of a batch are solved as one ODE (shared adaptive steps), as in FFJORD.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

TraceMethod = Literal["auto", "exact", "hutchinson"]

#: Up to this dimension `trace="auto"` computes the exact trace; above, Hutchinson's estimator.
EXACT_TRACE_MAX_DIM = 8


def resolve_trace(trace: str, dim: int) -> Literal["exact", "hutchinson"]:
    """`"auto"` becomes `"exact"` up to `EXACT_TRACE_MAX_DIM` dimensions, else `"hutchinson"`."""
    if trace == "auto":
        return "exact" if dim <= EXACT_TRACE_MAX_DIM else "hutchinson"
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'auto', 'exact' or 'hutchinson', not {trace!r}")
    return trace  # type: ignore[return-value]


class ConcatSquashLinear(eqx.Module):
    """`(W x + b) * sigmoid(a t + c) + d t`: a linear layer gated and shifted by time (FFJORD)."""

    linear: eqx.nn.Linear
    gate: eqx.nn.Linear
    shift: eqx.nn.Linear

    def __init__(self, in_size: int, out_size: int, *, dtype, key: PRNGKeyArray):
        k1, k2, k3 = jr.split(key, 3)
        self.linear = eqx.nn.Linear(in_size, out_size, dtype=dtype, key=k1)
        self.gate = eqx.nn.Linear(1, out_size, dtype=dtype, key=k2)
        self.shift = eqx.nn.Linear(1, out_size, use_bias=False, dtype=dtype, key=k3)

    def __call__(self, t: Float[Array, ""], x: Float[Array, " n"]) -> Float[Array, " m"]:
        tt = jnp.reshape(t, (1,)).astype(x.dtype)
        return self.linear(x) * jax.nn.sigmoid(self.gate(tt)) + self.shift(tt)


#: The field's activations by name (`CNFConfig.activation`): smooth, so that the field and its
#: Jacobian (the trace) are smooth for the adaptive solver.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": jax.nn.silu,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
}


class ConcatSquashField(eqx.Module):
    """A small time-conditioned MLP of concat-squash layers with a smooth activation
    (`depth` hidden layers of `width` units). The defaults live in `CNFConfig`."""

    layers: tuple[ConcatSquashLinear, ...]
    activation: Callable[[Array], Array] = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        width: int,
        depth: int,
        *,
        activation: Callable[[Array], Array],
        dtype=jnp.float32,
        key: PRNGKeyArray,
    ):
        sizes = [dim] + [width] * depth + [dim]
        keys = jr.split(key, len(sizes) - 1)
        self.layers = tuple(
            ConcatSquashLinear(a, b, dtype=dtype, key=k)
            for a, b, k in zip(sizes[:-1], sizes[1:], keys)
        )
        self.activation = activation

    def __call__(self, t: Float[Array, ""], y: Float[Array, " d"]) -> Float[Array, " d"]:
        h = y
        for layer in self.layers[:-1]:
            h = self.activation(layer(t, h))
        return self.layers[-1](t, h)


class SolveStats(eqx.Module):
    """What one batched solve cost and whether it succeeded."""

    num_steps: Int[Array, ""]
    ok: Bool[Array, ""]


class Integrals(eqx.Module):
    """Per-sample results of a backward (data -> base) solve."""

    z: Float[Array, "b d"]
    delta_logp: Float[Array, " b"]
    kinetic: Float[Array, " b"]
    frobenius: Float[Array, " b"]


def _controller_norm(error) -> Array:
    # Step-size control looks at the state and the log-density only: the regulariser integrals
    # are bookkeeping and must not change the steps (so that step counts compare fairly).
    # (Under `BacksolveAdjoint`'s backward pass the state is augmented: plain RMS there.)
    if not (isinstance(error, tuple) and len(error) == 4 and all(map(eqx.is_array, error))):
        return optx.rms_norm(error)
    y, logp = error[0], error[1]
    return jnp.sqrt((jnp.sum(y**2) + jnp.sum(logp**2)) / (y.size + logp.size))


def _augmented_dynamics(trace: Literal["exact", "hutchinson"]) -> Callable:
    # The field travels in `args` (not closed over) so that every diffrax adjoint, including
    # `BacksolveAdjoint`, can differentiate with respect to it.
    def dynamics(t, state, args):
        field, eps = args
        y = state[0]
        if trace == "exact":

            def one(yi):
                fi = field(t, yi)
                jac = jax.jacfwd(lambda v: field(t, v))(yi)
                return fi, jnp.trace(jac), jnp.sum(jac**2)

            f, tr, frob = jax.vmap(one)(y)
        else:
            f, vjp = jax.vjp(lambda yy: jax.vmap(lambda v: field(t, v))(yy), y)
            (e_jac,) = vjp(eps)
            tr = jnp.sum(e_jac * eps, axis=-1)
            frob = jnp.sum(e_jac**2, axis=-1)
        kinetic = jnp.sum(f**2, axis=-1)
        return f, tr, kinetic, frob

    return dynamics


class RK4(diffrax.AbstractERK):
    """The classical 4th-order Runge-Kutta method (four evaluations a step, no error estimate).

    The solver of fixed-step training solves (`CNFConfig.dt`): four evaluations a step against
    Tsit5's six, for coarse steps where an error estimate is not used anyway.
    """

    tableau = diffrax.ButcherTableau(
        c=np.array([0.5, 0.5, 1.0]),
        b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
        b_error=np.zeros(4),
        a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    )
    interpolation_cls = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms) -> int:
        return 4


def _controller(rtol: float, atol: float, dt: float | None):
    if dt is not None:
        return diffrax.ConstantStepSize()
    return diffrax.PIDController(rtol=rtol, atol=atol, norm=_controller_norm)


def integrate_to_base(
    field: ConcatSquashField,
    x: Float[Array, "b d"],
    t1: float,
    *,
    trace: Literal["exact", "hutchinson"],
    key: PRNGKeyArray | None = None,
    solver: diffrax.AbstractSolver | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    dt: float | None = None,
    max_steps: int = 2000,
) -> tuple[Integrals, SolveStats]:
    """Solve the augmented system from `x` at `t1` back to `t = 0` (standardised space).

    `dt` set: fixed steps of that size (default solver `RK4`); otherwise adaptive steps with
    `rtol`/`atol` (default solver `Tsit5`). Hutchinson's estimator needs `key` (Rademacher
    noise, one vector per sample per solve).
    """
    if trace == "hutchinson":
        if key is None:
            raise ValueError("Hutchinson's trace estimator needs a `key`")
        eps = jr.rademacher(key, x.shape, dtype=x.dtype)
    else:
        eps = None
    zeros = jnp.zeros(x.shape[:1], x.dtype)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_augmented_dynamics(trace)),
        solver if solver is not None else (diffrax.Tsit5() if dt is None else RK4()),
        t0=jnp.asarray(t1, x.dtype),  # times in the state's dtype: no float64 promotion
        t1=jnp.asarray(0.0, x.dtype),
        dt0=None if dt is None else jnp.asarray(-dt, x.dtype),
        y0=(x, zeros, zeros, zeros),
        args=(field, eps),
        stepsize_controller=_controller(rtol, atol, dt),
        adjoint=adjoint if adjoint is not None else diffrax.RecursiveCheckpointAdjoint(),
        max_steps=max_steps,
        throw=False,
    )
    z, delta, kinetic, frob = (leaf[-1] for leaf in sol.ys)
    ok = sol.result == diffrax.RESULTS.successful
    # Integrated backwards: delta(0) = -int_0^t1 tr dt is already the log-density correction;
    # the regulariser integrals come out negative and are flipped.
    return Integrals(z, delta, -kinetic, -frob), SolveStats(sol.stats["num_steps"], ok)


def gaussian_logpdf(z: Float[Array, "b d"]) -> Float[Array, " b"]:
    d = z.shape[-1]
    return -0.5 * jnp.sum(z**2, axis=-1) - 0.5 * d * math.log(2 * math.pi)


class CNF(eqx.Module):
    """A fitted flow in data space: standardisation `(x - shift) / scale`, then the ODE.

    `shift` and `scale` are fixed by the training data (never trained); `field` is the learnt
    vector field on `[0, t1]`.
    """

    field: ConcatSquashField
    shift: Float[Array, " d"]
    scale: Float[Array, " d"]
    t1: float = eqx.field(static=True)

    @property
    def dim(self) -> int:
        return self.shift.shape[0]

    def log_scale(self) -> Float[Array, ""]:
        return jnp.sum(jnp.log(self.scale))

    def standardise(self, x: Float[Array, "b d"]) -> Float[Array, "b d"]:
        return ((x - self.shift) / self.scale).astype(self.shift.dtype)


@eqx.filter_jit
def log_prob(
    model: CNF,
    x: Float[Array, "b d"],
    *,
    trace: TraceMethod = "auto",
    key: PRNGKeyArray | None = None,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4000,
) -> tuple[Float[Array, " b"], SolveStats]:
    """Log-density (nats) of each row of `x` in data units, and the solve's statistics.

    Rows of a failed solve (step limit, divergence) get `nan` and `stats.ok` is False.
    """
    method = resolve_trace(trace, model.dim)
    out, stats = integrate_to_base(
        model.field,
        model.standardise(x),
        model.t1,
        trace=method,
        key=key,
        solver=solver,
        rtol=rtol,
        atol=atol,
        max_steps=max_steps,
    )
    logp = gaussian_logpdf(out.z) + out.delta_logp - model.log_scale()
    return jnp.where(stats.ok, logp, jnp.nan), stats


@eqx.filter_jit
def sample(
    model: CNF,
    n: int,
    *,
    key: PRNGKeyArray,
    solver: diffrax.AbstractSolver | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4000,
) -> tuple[Float[Array, "n d"], SolveStats]:
    """Draw `n` samples: Gaussian noise solved forward from `t = 0` to `t1`, in data units."""
    z = jr.normal(key, (n, model.dim), dtype=model.shift.dtype)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, args: jax.vmap(lambda v: model.field(t, v))(y)),
        solver if solver is not None else diffrax.Tsit5(),
        t0=jnp.asarray(0.0, z.dtype),
        t1=jnp.asarray(model.t1, z.dtype),
        dt0=None,
        y0=z,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )
    ok = sol.result == diffrax.RESULTS.successful
    x = sol.ys[-1] * model.scale + model.shift
    return jnp.where(ok, x, jnp.nan), SolveStats(sol.stats["num_steps"], ok)
