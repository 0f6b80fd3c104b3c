"""Generate the three-species food chain whose middle species is not measured.

dx/dt = a x (1 − x/K) − b x y,   dy/dt = c x y − d y − e y z,   dz/dt = f y z − g z

with a = 1, K = 4, b = 1, c = 0.6, d = 0.4, e = 0.6, f = 0.5, g = 0.3: a resource x, a consumer
y that eats it and a predator z that eats the consumer. Two trajectories, from (1, 0.5, 0.5)
and (2, 0.5, 0.8) (the consumer stocked at 0.5 both times), t ∈ [0, 30] every 0.5 (61 points
each), 3% noise (σ = 0.03 × mean |state| per state). The CSV holds x and z only: the consumer
y was never counted.

Run `python -m data.food_chain.generate` from the repository root to rewrite the CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp

TRUE = {"a": 1.0, "K": 4.0, "b": 1.0, "c": 0.6, "d": 0.4, "e": 0.6, "f": 0.5, "g": 0.3}
STARTS = {"A": (1.0, 0.5, 0.5), "B": (2.0, 0.5, 0.8)}
HERE = Path(__file__).parent


def field(t, u, p=TRUE):
    x, y, z = u
    return [
        p["a"] * x * (1 - x / p["K"]) - p["b"] * x * y,
        p["c"] * x * y - p["d"] * y - p["e"] * y * z,
        p["f"] * y * z - p["g"] * z,
    ]


def simulate(ts, u0) -> np.ndarray:
    """The noise-free states (x, y, z) at `ts` from `u0`."""
    sol = solve_ivp(field, (ts[0], ts[-1]), u0, t_eval=ts, rtol=1e-10, atol=1e-12, method="DOP853")
    return sol.y.T


def frame(*, noise=0.03, seed=0, n=61, t1=30.0):
    import pandas as pd

    ts = np.linspace(0.0, t1, n)
    parts = []
    for k, (name, u0) in enumerate(STARTS.items()):
        clean = simulate(ts, u0)
        rng = np.random.default_rng(seed + k)
        ys = clean + noise * np.mean(np.abs(clean), axis=0) * rng.standard_normal(clean.shape)
        parts.append(pd.DataFrame({"trajectory": name, "t": ts, "x": ys[:, 0], "z": ys[:, 2]}))
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    frame().to_csv(HERE / "food_chain.csv", index=False, float_format="%.8g")
    print(f"wrote {HERE / 'food_chain.csv'}")


if __name__ == "__main__":
    main()
