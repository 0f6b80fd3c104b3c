"""Generate the bundled SEIR epidemic: states named S, E, I, R (names SymPy reserves for itself).

dS/dt = −β S I,  dE/dt = β S I − σ E,  dI/dt = σ E − γ I,  dR/dt = γ I  (fractions of a
population), β = 1.5, σ = 0.5, γ = 0.3. The model file knows the progression (σ, γ) and not the
transmission term β S I. Two trajectories (1% and 5% initially exposed), t ∈ [0, 40] every 1.0,
2% noise (σ = 0.02 × mean |state| per state).

Run `python -m data.seir.generate` from the repository root to rewrite the CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp

BETA, SIGMA, GAMMA = 1.5, 0.5, 0.3
STARTS = {"low": (0.99, 0.01, 0.0, 0.0), "high": (0.95, 0.05, 0.0, 0.0)}
HERE = Path(__file__).parent


def field(t, u):
    s, e, i, r = u
    return [-BETA * s * i, BETA * s * i - SIGMA * e, SIGMA * e - GAMMA * i, GAMMA * i]


def frame(*, noise=0.02, seed=0, n=41, t1=40.0):
    import pandas as pd

    ts = np.linspace(0.0, t1, n)
    parts = []
    for k, (name, u0) in enumerate(STARTS.items()):
        sol = solve_ivp(field, (0, t1), u0, t_eval=ts, rtol=1e-10, atol=1e-12, method="DOP853")
        clean = sol.y.T
        rng = np.random.default_rng(seed + k)
        ys = clean + noise * np.mean(np.abs(clean), axis=0) * rng.standard_normal(clean.shape)
        part = pd.DataFrame(ys, columns=["S", "E", "I", "R"])
        part.insert(0, "t", ts)
        part.insert(0, "trajectory", name)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    frame().to_csv(HERE / "seir.csv", index=False, float_format="%.8g")


if __name__ == "__main__":
    main()
