"""Generate the bundled Lotka–Volterra data set of the UDE paper.

dx/dt = α x − β x y,  dy/dt = γ x y − δ y  with α=1.3, β=0.9, γ=0.8, δ=1.8,
x₀ = (0.44249296, 4.6280594), sampled on t ∈ [0, 5] every 0.25 (21 points) as in the SciML
missing-physics tutorial, with 5% noise: σ = 0.05 × mean |state|, per state.

Run `python -m data.lotka_volterra.generate` from the repository root to rewrite the CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp

TRUE = {"alpha": 1.3, "beta": 0.9, "gamma": 0.8, "delta": 1.8}
X0 = (0.44249296, 4.6280594)
HERE = Path(__file__).parent


def field(t, u, alpha=1.3, beta=0.9, gamma=0.8, delta=1.8):
    x, y = u
    return [alpha * x - beta * x * y, gamma * x * y - delta * y]


def missing_terms(u):
    """The terms the bundled model file does not know: (−βxy, +γxy)."""
    u = np.asarray(u)
    x, y = u[..., 0], u[..., 1]
    return np.stack([-TRUE["beta"] * x * y, TRUE["gamma"] * x * y], axis=-1)


def simulate(ts, x0=X0, **params) -> np.ndarray:
    p = {**TRUE, **params}
    sol = solve_ivp(
        field,
        (ts[0], ts[-1]),
        x0,
        t_eval=ts,
        args=tuple(p.values()),
        rtol=1e-10,
        atol=1e-12,
        method="DOP853",
    )
    return sol.y.T


def noisy(ts, x0=X0, *, noise=0.05, seed=0, **params) -> np.ndarray:
    clean = simulate(ts, x0, **params)
    rng = np.random.default_rng(seed)
    sigma = noise * np.mean(np.abs(clean), axis=0)
    return clean + sigma * rng.standard_normal(clean.shape)


def main() -> None:
    import pandas as pd

    ts = np.linspace(0.0, 5.0, 21)
    ys = noisy(ts, seed=5)
    df = pd.DataFrame({"t": ts, "x": ys[:, 0], "y": ys[:, 1]})
    df.to_csv(HERE / "lotka_volterra.csv", index=False, float_format="%.8g")
    print(f"wrote {HERE / 'lotka_volterra.csv'} ({len(df)} rows)")


if __name__ == "__main__":
    main()
