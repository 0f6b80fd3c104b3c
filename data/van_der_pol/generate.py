"""Generate the bundled van der Pol data set: a cubic missing term.

dx/dt = y,  dy/dt = −x + μ y − μ x² y  with μ = 1. The model file knows the linear oscillator
with its damping (−x + μy); the cubic term −μx²y that makes the limit cycle is missing.
Two trajectories (from inside and from outside the limit cycle), t ∈ [0, 8] every 0.4
(21 points each), 5% noise (σ = 0.05 × mean |state| per state).

Run `python -m data.van_der_pol.generate` from the repository root to rewrite the CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp

MU = 1.0
STARTS = {"inside": (0.5, 0.0), "outside": (2.5, 1.0)}
HERE = Path(__file__).parent


def field(t, u, mu=MU):
    x, y = u
    return [y, -x + mu * y - mu * x**2 * y]


def missing_terms(u):
    """The term the model file does not know: (0, −μx²y)."""
    u = np.asarray(u)
    x, y = u[..., 0], u[..., 1]
    return np.stack([np.zeros_like(x), -MU * x**2 * y], axis=-1)


def simulate(ts, x0) -> np.ndarray:
    sol = solve_ivp(field, (ts[0], ts[-1]), x0, t_eval=ts, rtol=1e-10, atol=1e-12, method="DOP853")
    return sol.y.T


def noisy(ts, x0, *, noise=0.05, seed=0) -> np.ndarray:
    clean = simulate(ts, x0)
    rng = np.random.default_rng(seed)
    sigma = noise * np.mean(np.abs(clean), axis=0)
    return clean + sigma * rng.standard_normal(clean.shape)


def frame(*, noise=0.05, seed=0, n=21, t1=8.0):
    import pandas as pd

    ts = np.linspace(0.0, t1, n)
    parts = []
    for k, (name, x0) in enumerate(STARTS.items()):
        ys = noisy(ts, x0, noise=noise, seed=seed + k)
        parts.append(pd.DataFrame({"trajectory": name, "t": ts, "x": ys[:, 0], "y": ys[:, 1]}))
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    df = frame()
    df.to_csv(HERE / "van_der_pol.csv", index=False, float_format="%.8g")
    print(f"wrote {HERE / 'van_der_pol.csv'} ({len(df)} rows)")


if __name__ == "__main__":
    main()
