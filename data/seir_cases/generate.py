"""Generate an SEIR epidemic of which only weekly reported new cases are known.

dS/dt = −β S I,  dE/dt = β S I − σ E,  dI/dt = σ E − γ I  (fractions of a population of
N = 100 000), β = 0.5, σ = 0.25, γ = 0.2 (per day). The incidence (people becoming infectious
per day) is σ E; a share ρ = 0.4 of it is reported. Observed: `cases` = N ρ σ E (reported new
cases per day), once a week for 20 weeks (21 reports), with 5% multiplicative noise. No state
is measured. Two epidemics: one seeded with 10 exposed and 10 infectious people in 100 000,
one with 100 and 100.

Run `python -m data.seir_cases.generate` from the repository root to rewrite the CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp

TRUE = {"beta": 0.5, "sigma": 0.25, "gamma": 0.2, "rho": 0.4}
N = 100_000.0
STARTS = {"small": (1 - 2e-4, 1e-4, 1e-4), "large": (1 - 2e-3, 1e-3, 1e-3)}
HERE = Path(__file__).parent


def field(t, u, p=TRUE):
    s, e, i = u
    return [-p["beta"] * s * i, p["beta"] * s * i - p["sigma"] * e, p["sigma"] * e - p["gamma"] * i]


def simulate(ts, u0) -> np.ndarray:
    """The noise-free states (S, E, I) at `ts` from `u0`."""
    sol = solve_ivp(field, (ts[0], ts[-1]), u0, t_eval=ts, rtol=1e-10, atol=1e-14, method="DOP853")
    return sol.y.T


def cases(states: np.ndarray) -> np.ndarray:
    """Reported new cases per day: N ρ σ E."""
    return N * TRUE["rho"] * TRUE["sigma"] * states[:, 1]


def frame(*, noise=0.05, seed=0, weeks=20):
    import pandas as pd

    ts = 7.0 * np.arange(weeks + 1)
    parts = []
    for k, (name, u0) in enumerate(STARTS.items()):
        clean = cases(simulate(ts, u0))
        rng = np.random.default_rng(seed + k)
        noisy = clean * np.exp(noise * rng.standard_normal(len(ts)))
        parts.append(pd.DataFrame({"trajectory": name, "t": ts, "cases": noisy}))
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    frame().to_csv(HERE / "seir_cases.csv", index=False, float_format="%.6g")
    print(f"wrote {HERE / 'seir_cases.csv'}")


if __name__ == "__main__":
    main()
