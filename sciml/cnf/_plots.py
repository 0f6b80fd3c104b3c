"""PNG plots of a fitted CNF: density heat map and samples (2-D), pairwise marginals (more)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._io import atomic_path
from ._eval import evaluate_log_prob
from ._flow import CNF

#: Columns shown in the pairwise-marginals plot.
MAX_PAIR_COLUMNS = 5


def _figure_module():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_density_2d(
    folder: Path,
    model: CNF,
    train: np.ndarray,
    test: np.ndarray,
    samples: np.ndarray,
    columns: Sequence[str],
    *,
    grid: int = 64,
) -> None:
    """`density.png`: the model density on a grid beside the data; `samples.png`: samples vs
    held-out data on the same axes."""
    plt = _figure_module()
    lo, hi = np.percentile(train, 0.5, axis=0), np.percentile(train, 99.5, axis=0)
    pad = 0.15 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    gx, gy = np.linspace(lo[0], hi[0], grid), np.linspace(lo[1], hi[1], grid)
    xx, yy = np.meshgrid(gx, gy)
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
    logp, _ = evaluate_log_prob(model, pts, trace="exact")
    dens = np.exp(logp).reshape(grid, grid)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharex=True, sharey=True)
    axes[0].hist2d(train[:, 0], train[:, 1], bins=grid, range=[[lo[0], hi[0]], [lo[1], hi[1]]])
    axes[0].set_title(f"training data (n={len(train)})")
    im = axes[1].imshow(
        dens, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), aspect="auto", cmap="viridis"
    )
    axes[1].set_title("CNF density")
    fig.colorbar(im, ax=axes[1], label="p(x)")
    for ax in axes:
        ax.set_xlabel(columns[0])
    axes[0].set_ylabel(columns[1])
    _save(fig, folder / "density.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(test[:, 0], test[:, 1], s=4, alpha=0.5, label=f"held-out data (n={len(test)})")
    ax.scatter(
        samples[:, 0], samples[:, 1], s=4, alpha=0.5, label=f"CNF samples (n={len(samples)})"
    )
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel(columns[0])
    ax.set_ylabel(columns[1])
    ax.legend(loc="upper right", markerscale=3)
    _save(fig, folder / "samples.png")
    plt.close(fig)


def plot_pairs(path: Path, data: np.ndarray, samples: np.ndarray, columns: Sequence[str]) -> None:
    """Pairwise marginals of the first `MAX_PAIR_COLUMNS` columns: data vs samples."""
    plt = _figure_module()
    k = min(data.shape[1], MAX_PAIR_COLUMNS)
    fig, axes = plt.subplots(k, k, figsize=(2.4 * k, 2.4 * k), squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if i == j:
                bins = np.histogram_bin_edges(np.concatenate([data[:, i], samples[:, i]]), 30)
                ax.hist(data[:, i], bins=bins, density=True, alpha=0.5, label="data")
                ax.hist(samples[:, i], bins=bins, density=True, alpha=0.5, label="CNF")
            elif i > j:
                ax.scatter(data[:, j], data[:, i], s=3, alpha=0.5)
                ax.scatter(samples[:, j], samples[:, i], s=3, alpha=0.3)
            else:
                ax.axis("off")
            if i == k - 1:
                ax.set_xlabel(columns[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(columns[i], fontsize=8)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        f"pairwise marginals: held-out data vs CNF samples ({k} of {data.shape[1]} columns)"
    )
    _save(fig, path)
    plt.close(fig)


def plot_training(path: Path, history: Sequence[dict], best_step: int) -> None:
    """`training.png`: training NLL and validation NLL per check, the learning rate, and the
    kept (best) check."""
    plt = _figure_module()

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if r.get(key) is None else r[key] for r in history], float)

    step = col("step")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(step, col("nll"), marker=".", label="training NLL (batches)")
    val = col("val_nll")
    if np.isfinite(val).any():
        ax1.plot(step, val, marker=".", label="validation NLL (averaged weights)")
    ax1.axvline(best_step, color="grey", ls="--", lw=1, label=f"kept: step {best_step}")
    ax1.set_xlabel("training step")
    ax1.set_ylabel("nats per sample")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(step, col("lr"), marker=".", color="C2")
    ax2.set_yscale("log")
    ax2.set_xlabel("training step")
    ax2.set_title("learning rate")
    ax2.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
