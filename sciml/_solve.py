"""ODE solves shared by every stage: one trajectory, saved at given times, failures as results."""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

VectorField = Callable[[Float[Array, ""], Float[Array, " d"]], Float[Array, " d"]]


def solve(
    field: VectorField,
    y0: Float[Array, " d"],
    ts: Float[Array, " m"],
    *,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    max_steps: int = 4096,
    solver: diffrax.AbstractSolver | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    bound: Float[Array, " d"] | None = None,
) -> tuple[Float[Array, "m d"], Bool[Array, ""], Int[Array, ""]]:
    """Integrate `dy/dt = field(t, y)` from `ts[0]` and save at `ts` (non-decreasing).

    Returns `(ys, ok, num_steps)`. A solve that diverges or hits `max_steps` does not raise
    (so that it can be batched with `vmap` and handled by the caller): `ok` is False and the
    unreached states are non-finite. With `bound`, a solve whose state leaves `|y| <= bound`
    stops there and fails (a blow-up ends in a few steps instead of at `max_steps`).
    """
    term = diffrax.ODETerm(lambda t, y, args: field(t, y))
    event = None
    if bound is not None:
        event = diffrax.Event(lambda t, y, args, **kw: jnp.any(jnp.abs(y) > bound))
    sol = diffrax.diffeqsolve(
        term,
        solver if solver is not None else diffrax.Tsit5(),
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=y0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        adjoint=adjoint if adjoint is not None else diffrax.RecursiveCheckpointAdjoint(),
        throw=False,
        event=event,
    )
    ok = sol.result == diffrax.RESULTS.successful
    ys = jnp.where(ok, sol.ys, jnp.inf)
    return ys, ok, sol.stats["num_steps"]
