"""Write the bundled 2-D toy densities for the CNF stage as CSV (deterministic, seed 0).

    python data/cnf/generate.py            # writes two_moons.csv, ring.csv, checkerboard.csv

Each file has columns `x, y` and `N_ROWS` rows. The higher-dimensional tabular set comes from
scikit-learn's bundled data (`sciml cnf --data sklearn:wine ...`), never downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

N_ROWS = 2000
HERE = Path(__file__).resolve().parent


def two_moons(n: int, rng: np.random.Generator, noise: float = 0.08) -> np.ndarray:
    """Two interleaved half circles with Gaussian noise."""
    k = n // 2
    a = rng.uniform(0, np.pi, k)
    b = rng.uniform(0, np.pi, n - k)
    upper = np.stack([np.cos(a), np.sin(a)], axis=1)
    lower = np.stack([1 - np.cos(b), 0.5 - np.sin(b)], axis=1)
    x = np.concatenate([upper, lower]) + noise * rng.standard_normal((n, 2))
    return x[rng.permutation(n)]


def ring(n: int, rng: np.random.Generator, k: int = 8, radius: float = 2.0, sd: float = 0.2):
    """An equal mixture of `k` isotropic Gaussians (sd `sd`) evenly spaced on a circle."""
    angles = 2 * np.pi * rng.integers(0, k, n) / k
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centres + sd * rng.standard_normal((n, 2))


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the dark squares of a 4x4 checkerboard on [-2, 2]^2."""
    x1 = rng.uniform(-2, 2, n)
    x2 = rng.uniform(0, 1, n) + rng.integers(0, 2, n) * 2.0 - 2.0
    x2 = x2 + (np.floor(x1) % 2)
    return np.stack([x1, x2], axis=1)


DENSITIES = {"two_moons": two_moons, "ring": ring, "checkerboard": checkerboard}


def main(out: Path = HERE, n: int = N_ROWS, seed: int = 0) -> list[Path]:
    paths = []
    for i, (name, fn) in enumerate(DENSITIES.items()):
        rng = np.random.default_rng([seed, i])
        x = fn(n, rng)
        path = out / f"{name}.csv"
        pd.DataFrame(x, columns=["x", "y"]).to_csv(path, index=False, float_format="%.6f")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in main():
        print(p)
