"""Generated colour image sets with known classes: shapes, textures and oriented bars.

Every image has random colours (foreground and background drawn independently, either may be
the lighter), random size, position or phase, and Gaussian pixel noise: the class never
follows from colour or brightness, only from form. Deterministic for a given seed.

    make_image_set("shapes", 2000, size=32, seed=0)   # ImageSet of (2000, 3, 32, 32)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .._errors import InputError
from ._data import ImageSet, validate

#: Pixel noise (standard deviation, on [0, 1] intensities).
NOISE = 0.08
#: Least mean absolute difference between the foreground and background colours.
MIN_CONTRAST = 0.3

Masks = Callable[[np.ndarray, np.ndarray, np.ndarray, int, np.random.Generator], np.ndarray]


def _colours(n: int, channels: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours (n, C) at least `MIN_CONTRAST` apart on average."""
    fg, bg = rng.uniform(0, 1, (n, channels)), rng.uniform(0, 1, (n, channels))
    for _ in range(100):
        close = np.abs(fg - bg).mean(axis=1) < MIN_CONTRAST
        if not close.any():
            break
        fg[close] = rng.uniform(0, 1, (int(close.sum()), channels))
    return fg, bg


def _grid(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(size, dtype=np.float64) + 0.5
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return np.broadcast_to(yy, (n, size, size)), np.broadcast_to(xx, (n, size, size))


def _shapes(labels, yy, xx, size, rng) -> np.ndarray:
    """0 disc, 1 square, 2 triangle (apex up), 3 plus sign; radius 15-35% of the side."""
    n = len(labels)
    r = rng.uniform(0.15, 0.35, n) * size
    cy, cx = (rng.uniform(r, size - r) for _ in range(2))
    dy = (yy - cy[:, None, None]) / r[:, None, None]
    dx = (xx - cx[:, None, None]) / r[:, None, None]
    masks = np.stack(
        [
            dx**2 + dy**2 <= 1,
            np.maximum(np.abs(dx), np.abs(dy)) <= 0.8,
            (np.abs(dy) <= 0.9) & (np.abs(dx) <= (dy + 0.9) / 1.8),
            ((np.abs(dx) <= 0.3) & (np.abs(dy) <= 1)) | ((np.abs(dy) <= 0.3) & (np.abs(dx) <= 1)),
        ]
    )
    return masks[labels, np.arange(n)]


def _textures(labels, yy, xx, size, rng) -> np.ndarray:
    """0 horizontal stripes, 1 vertical stripes, 2 diagonal stripes, 3 checkerboard; random
    period (4-9 pixels) and phase."""
    n = len(labels)
    period = rng.uniform(4, 9, n)[:, None, None]
    py, px = (rng.uniform(0, 1, n)[:, None, None] * period for _ in range(2))
    u = np.floor((yy + py) / period * 2) % 2
    v = np.floor((xx + px) / period * 2) % 2
    w = np.floor((yy + xx + py) / period * 2 / np.sqrt(2)) % 2
    masks = np.stack([u, v, w, (u + v) % 2]).astype(bool)
    return masks[labels, np.arange(n)]


def _bars(labels, yy, xx, size, rng) -> np.ndarray:
    """A bar at 0, 45, 90 or 135 degrees (class), random length, thickness and position."""
    n = len(labels)
    angle = labels * np.pi / 4 + rng.normal(0, 0.05, n)
    half = rng.uniform(0.25, 0.4, n) * size
    thick = rng.uniform(0.06, 0.12, n) * size
    cy, cx = (rng.uniform(0.35, 0.65, n) * size for _ in range(2))
    dy, dx = yy - cy[:, None, None], xx - cx[:, None, None]
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    along, across = dx * c - dy * s, dx * s + dy * c
    return (np.abs(along) <= half[:, None, None]) & (np.abs(across) <= thick[:, None, None] / 2)


KINDS: dict[str, Masks] = {"shapes": _shapes, "textures": _textures, "bars": _bars}


def make_image_set(
    kind: str, n: int, *, size: int = 32, channels: int = 3, seed: int = 0
) -> ImageSet:
    """`n` images (n, channels, size, size) in [0, 1] of 4 balanced classes of `kind`.

    `kind`: `"shapes"` (disc, square, triangle, plus), `"textures"` (horizontal, vertical and
    diagonal stripes, checkerboard) or `"bars"` (four orientations).
    """
    if kind not in KINDS:
        raise InputError(f"unknown image set {kind!r}; choose one of {', '.join(KINDS)}")
    if n < 1 or size < 8 or channels < 1:
        raise InputError("make_image_set: need n >= 1, size >= 8 and channels >= 1")
    rng = np.random.default_rng([seed, sum(map(ord, kind))])
    labels = rng.permutation(np.arange(n) % 4)
    yy, xx = _grid(n, size)
    mask = KINDS[kind](labels, yy, xx, size, rng)[:, None]
    fg, bg = _colours(n, channels, rng)
    images = np.where(mask, fg[:, :, None, None], bg[:, :, None, None])
    images = np.clip(images + NOISE * rng.standard_normal(images.shape), 0, 1)
    return validate(images.astype(np.float32), labels, f"generated:{kind}")
