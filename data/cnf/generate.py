"""2-D toy densities for the CNF stage: samplers, and exact log-densities where known.

    python data/cnf/generate.py            # writes two_moons.csv, ring.csv, checkerboard.csv

Each bundled file has columns `x, y` and `N_ROWS` rows (deterministic, seed 0). The
higher-dimensional tabular set comes from scikit-learn's bundled data
(`sciml cnf --data sklearn:wine ...`), never downloaded.

`SHARP` holds the benchmark targets with sharp, separated modes and a known density
(`bench/cnf.py`): each entry is `(sampler(n, rng), logpdf(x))`. All Gaussian modes share one
width, `SHARP_SD`; none of them is tuned to the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import logsumexp

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

# ---------------------------------------------------------------------------------------------
# Sharp targets with known densities

#: Standard deviation of every Gaussian mode of the sharp targets.
SHARP_SD = 0.1


def mixture_sampler(centres: np.ndarray, sd: float):
    """Sampler of the equal mixture of isotropic Gaussians (sd `sd`) at `centres` (K, 2)."""

    def draw(n: int, rng: np.random.Generator) -> np.ndarray:
        comp = rng.integers(0, len(centres), n)
        return centres[comp] + sd * rng.standard_normal((n, 2))

    return draw


def mixture_logpdf(centres: np.ndarray, sd: float):
    """Exact log-density of `mixture_sampler(centres, sd)`."""

    def logpdf(x: np.ndarray) -> np.ndarray:
        sq = ((np.asarray(x)[:, None, :] - centres[None]) ** 2).sum(-1)
        comp = -0.5 * sq / sd**2 - np.log(2 * np.pi * sd**2)
        return logsumexp(comp, axis=1) - np.log(len(centres))

    return logpdf


def ring_centres(k: int = 8, radius: float = 2.0) -> np.ndarray:
    """`k` points evenly spaced on a circle."""
    a = 2 * np.pi * np.arange(k) / k
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def grid_centres(k: int = 4, spacing: float = 1.0) -> np.ndarray:
    """A `k x k` square grid centred on the origin."""
    g = (np.arange(k) - (k - 1) / 2) * spacing
    xx, yy = np.meshgrid(g, g)
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def spiral_centres(k: int = 60, turns: float = 1.75, r0: float = 0.3, r1: float = 2.5):
    """`k` points evenly spaced in arc length along an Archimedean spiral (radius r0 to r1)."""
    theta = np.linspace(0, 2 * np.pi * turns, 4000)
    r = r0 + (r1 - r0) * theta / theta[-1]
    pts = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    return np.stack([np.interp(np.linspace(0, arc[-1], k), arc, pts[:, j]) for j in (0, 1)], 1)


def checkerboard_logpdf(x: np.ndarray) -> np.ndarray:
    """Exact log-density of `checkerboard`: log(1/8) on the 8 dark unit squares, else -inf."""
    x = np.asarray(x)
    inside = (np.abs(x) <= 2).all(axis=1)
    dark = (np.floor(x[:, 0]) + np.floor(x[:, 1])) % 2 == 0
    return np.where(inside & dark, -np.log(8.0), -np.inf)


_SHARP_CENTRES = {
    "ring8": ring_centres(8, 2.0),
    "grid16": grid_centres(4, 1.0),
    "spiral": spiral_centres(),
}
SHARP = {
    **{
        name: (mixture_sampler(c, SHARP_SD), mixture_logpdf(c, SHARP_SD))
        for name, c in _SHARP_CENTRES.items()
    },
    "checkerboard": (checkerboard, checkerboard_logpdf),
}


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
