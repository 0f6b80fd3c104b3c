"""Where the library needs JAX in float64, and only there.

ODE fitting (the mechanistic fit, the UDE, the refit of discovered terms) needs double
precision: Levenberg–Marquardt and L-BFGS stall in float32 well before the data's noise level.
JAX's precision is one switch per process, so the library turns it on when it builds what
needs it, a `MechanisticModel` (every ODE fit, UDE, distillation and review starts from one),
and not when `sciml` is imported: a program that only reads data, renders reports or trains a
CNF or classifier (float32 models) keeps JAX's default.
"""

from __future__ import annotations

import jax


def ensure_float64() -> None:
    """Switch JAX to float64 for this process (once; later calls do nothing).

    Arrays created before keep their dtype; functions compiled before are traced again, since
    the precision is part of JAX's trace context.
    """
    if not jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", True)
