"""Figures of a classifier run: confusion matrix and training curves (PNG, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .._io import atomic_path


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def _save(fig: object, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)  # type: ignore[attr-defined]


def plot_confusion(
    cm: np.ndarray, classes: Sequence[object], path: str | os.PathLike[str], *, title: str
) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    k = len(classes)
    size = min(10.0, 2.5 + 0.45 * k)
    fig = Figure(figsize=(size, size * 0.9), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8, label="samples")
    if k <= 30:
        ticks = np.arange(k)
        ax.set_xticks(ticks, [str(c) for c in classes], rotation=90 if k > 12 else 0)
        ax.set_yticks(ticks, [str(c) for c in classes])
        threshold = cm.max() / 2 if cm.size else 0
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    colour = "white" if cm[i, j] > threshold else "black"
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=colour, size=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    _save(fig, path)


def plot_training(history: dict[str, list[float]], path: str | os.PathLike[str]) -> None:
    from matplotlib.figure import Figure

    epochs = np.arange(1, len(history["loss"]) + 1)

    def series(name: str) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in history.get(name, [])], float)

    fig = Figure(figsize=(11, 3.4), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.plot(epochs, series("loss"), marker=".")
    ax1.set_yscale("log")
    ax1.set_title("training loss (cross-entropy)")
    ax2.plot(epochs, series("train_accuracy"), marker=".", label="train (running)")
    val = series("val_accuracy")
    if np.isfinite(val).any():
        ax2.plot(epochs, val, marker=".", label="validation (chooses the kept epoch)")
        ax2.axvline(int(np.nanargmax(val)) + 1, color="grey", ls="--", lw=1)
    test = series("test_accuracy")
    if np.isfinite(test).any():
        ax2.plot(epochs, test, marker=".", label="held out (not used in training)")
    ax2.set_title("accuracy")
    ax2.legend(fontsize=7)
    ax3.plot(epochs, series("mean_steps"), marker=".", color="C2")
    ax3.set_title("mean solver steps per sample")
    for ax in (ax1, ax2, ax3):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _save(fig, path)
