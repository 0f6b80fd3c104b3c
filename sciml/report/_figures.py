"""Figures as embedded PNG (data URIs), drawn on bare matplotlib Figures (no pyplot state)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
import sympy as sp
from matplotlib.figure import Figure

from ._math import evaluate
from ._run import Run, Window

MODEL_STYLE = {
    "mechanistic": {"color": "#7f7f7f", "linestyle": "--", "label": "mechanistic fit"},
    "ude": {"color": "#1f77b4", "linestyle": "-", "label": "UDE"},
    "final": {"color": "#d62728", "linestyle": "-", "label": "final model"},
}
ENGINE_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
MAX_TRAJECTORIES = 6
DPI = 96


def to_data_uri(fig: Figure) -> str:
    """The figure as a base64 PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _limits(values: Sequence[np.ndarray], margin: float = 0.25) -> tuple[float, float] | None:
    finite = np.concatenate([np.ravel(v)[np.isfinite(np.ravel(v))] for v in values] or [[]])
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    pad = margin * (hi - lo) if hi > lo else max(abs(hi), 1.0) * margin
    return lo - pad, hi + pad


def _shade(ax, window: Window | None, t_end: float) -> None:
    if window is None:
        return
    if window.train_end < window.t1:
        ax.axvspan(window.train_end, window.t1, color="#ff7f0e", alpha=0.12, lw=0)
    if t_end > window.t1:
        ax.axvspan(window.t1, t_end, color="#7f7f7f", alpha=0.15, lw=0)


def fit_figure(run: Run) -> Figure | None:
    """Data against the mechanistic fit, the UDE and the final model, per trajectory and state.

    Held-out data are shaded orange, the horizon past the data grey. The vertical range follows
    the data and the UDE, so a diverging model leaves the axes rather than flattening them.
    """
    pred = run.predictions
    if pred is None or not len(pred):
        return None
    states = [s for s in run.states if s in pred]
    names = list(dict.fromkeys(pred["trajectory"]))[:MAX_TRAJECTORIES]
    windows = run.windows()
    data = {tr.name: tr for tr in run.data.trajectories} if run.data is not None else {}
    fig = Figure(figsize=(4.2 * len(states), 2.6 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), len(states), squeeze=False)
    for i, name in enumerate(names):
        rows = pred[pred["trajectory"] == name]
        t_end = float(rows["t"].max())
        window = windows.get(name)
        tr = data.get(name)
        for j, state in enumerate(states):
            ax = axes[i, j]
            _shade(ax, window, t_end)
            scale_from = []
            for model, style in MODEL_STYLE.items():
                m = rows[rows["model"] == model]
                if len(m):
                    ax.plot(m["t"], m[state], lw=1.6, **style)
                    if model == "ude":
                        scale_from.append(m[state].to_numpy())
            if tr is not None:
                y = tr.y[:, run.data.states.index(state)]
                train = tr.t <= (window.train_end if window else tr.t1) + 1e-12
                ax.plot(tr.t[train], y[train], "o", ms=3.5, color="k", label="data")
                if (~train).any():
                    ax.plot(
                        tr.t[~train],
                        y[~train],
                        "o",
                        ms=4,
                        mfc="white",
                        color="k",
                        label="held-out data",
                    )
                scale_from.append(y)
            lim = _limits(scale_from)
            if lim is not None:
                ax.set_ylim(*lim)
            ax.set_title(f"{state} — trajectory {name}", fontsize=10)
            ax.set_xlabel("t")
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(labels), frameon=False)
    return fig


def _map_axes(expr: sp.Expr | None, states: Sequence[str]) -> list[str]:
    """Two states to span the state-region map: those the formula uses first."""
    used = sorted({s.name for s in expr.free_symbols} & set(states)) if expr is not None else []
    rest = [s for s in states if s not in used]
    return (used + rest)[:2]


def residual_figure(
    run: Run, state: str, selected: sp.Expr | None, final: sp.Expr | None
) -> Figure | None:
    """The network's residual against the selected formula and its refit version.

    Left: along the trajectories. Middle: formula against network at every dense sample.
    Right: the refit formula over the region the samples cover (colour), the network's
    output at the samples drawn in the same colours (matching colours: agreement).
    """
    dense = run.dense
    col = f"residual_{state}"
    if dense is not None and "source" in dense:
        dense = dense[dense["source"].to_numpy() >= -1]  # the network's samples, not the data's
    if dense is None or col not in dense or not len(dense):
        return None
    n = len(dense)
    columns = {c: dense[c].to_numpy(float) for c in dense.columns if c != "source"}
    network = columns[col]
    formulas = {
        "selected formula": (selected, "#2ca02c", ":"),
        "refit formula (final model)": (final, "#d62728", "--"),
    }
    values = {k: evaluate(e, columns, n) for k, (e, _, _) in formulas.items() if e is not None}
    fig = Figure(figsize=(13.5, 3.6), layout="constrained")
    ax_t, ax_p, ax_m = fig.subplots(1, 3)
    on_traj = dense["source"].to_numpy() >= 0
    for src in sorted(set(dense["source"][on_traj])):
        rows = (dense["source"] == src).to_numpy()
        first = src == min(dense["source"][on_traj])
        ax_t.plot(
            columns["t"][rows],
            network[rows],
            color="k",
            lw=2.2,
            alpha=0.6,
            label="network" if first else None,
        )
        for label, v in values.items():
            _, color, ls = formulas[label]
            ax_t.plot(
                columns["t"][rows],
                v[rows],
                color=color,
                ls=ls,
                lw=1.6,
                label=label if first else None,
            )
    ax_t.set_xlabel("t")
    ax_t.set_ylabel(f"residual of d{state}/dt")
    ax_t.set_title("along the trajectories", fontsize=10)
    ax_t.legend(fontsize=8)
    lo_hi = _limits([network], margin=0.05) or (-1.0, 1.0)
    ax_p.plot(lo_hi, lo_hi, color="k", lw=0.8, alpha=0.6)
    for label, v in values.items():
        _, color, _ = formulas[label]
        ax_p.plot(network, v, ".", ms=3, color=color, alpha=0.6, label=label)
    ax_p.set_xlim(*lo_hi)
    ax_p.set_ylim(*(_limits([network] + list(values.values()), margin=0.05) or lo_hi))
    ax_p.set_xlabel("network output")
    ax_p.set_ylabel("formula")
    ax_p.set_title("formula vs network at the dense samples", fontsize=10)
    for ax in (ax_t, ax_p):
        ax.grid(alpha=0.3)
    _state_map(ax_m, fig, run, state, final if final is not None else selected, columns)
    return fig


def _state_map(ax, fig: Figure, run: Run, state: str, expr, columns) -> None:
    axes_states = _map_axes(expr, run.states)
    network = columns[f"residual_{state}"]
    if len(axes_states) < 2 or expr is None:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no two-state region to map", ha="center", va="center")
        return
    a, b = axes_states
    xa, xb = columns[a], columns[b]
    ga = np.linspace(xa.min(), xa.max(), 120)
    gb = np.linspace(xb.min(), xb.max(), 120)
    A, B = np.meshgrid(ga, gb)
    grid = {a: A.ravel(), b: B.ravel()}
    for s in run.states:  # other states at their median over the samples
        if s not in grid and s in columns:
            grid[s] = np.full(A.size, float(np.median(columns[s])))
    grid["t"] = np.full(A.size, float(np.median(columns["t"])))
    Z = evaluate(expr, grid, A.size).reshape(A.shape)
    lim = _limits([network, Z], margin=0.0) or (-1.0, 1.0)
    mesh = ax.pcolormesh(A, B, Z, cmap="viridis", vmin=lim[0], vmax=lim[1], shading="auto")
    ax.scatter(
        xa,
        xb,
        c=network,
        cmap="viridis",
        vmin=lim[0],
        vmax=lim[1],
        s=24,
        edgecolors="k",
        linewidths=0.4,
    )
    fig.colorbar(mesh, ax=ax, label=f"residual of d{state}/dt")
    ax.set_xlabel(a)
    ax.set_ylabel(b)
    others = [s for s in run.states if s not in (a, b)]
    ax.set_title(
        "refit formula (map) and network (dots)"
        + (f"; {', '.join(others)} at median" if others else ""),
        fontsize=10,
    )


def pareto_figure(candidates: pd.DataFrame, state: str) -> Figure | None:
    """Complexity against loss (log scale) for each engine, the selected candidate starred."""
    rows = candidates[candidates["state"].astype(str) == state]
    if not len(rows):
        return None
    fig = Figure(figsize=(5.6, 3.6), layout="constrained")
    ax = fig.subplots()
    for k, (engine, group) in enumerate(rows.groupby("engine", sort=True)):
        g = group.sort_values("complexity")
        loss = g["loss"].to_numpy(float)
        ax.step(
            g["complexity"],
            np.where(loss > 0, loss, np.nan),
            where="post",
            marker="o",
            ms=4,
            color=ENGINE_COLORS[k % len(ENGINE_COLORS)],
            label=str(engine),
        )
    chosen = rows[rows["selected"].astype(str).str.lower() == "true"]
    if len(chosen):
        ax.plot(
            chosen["complexity"],
            chosen["loss"],
            "*",
            ms=16,
            color="gold",
            mec="k",
            label="selected",
            zorder=5,
        )
    ax.set_yscale("log")
    ax.set_xlabel("complexity")
    ax.set_ylabel("loss (log scale)")
    ax.set_title(f"Pareto front of the residual of d{state}/dt", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


PHASE_STYLE = {
    "collocation": ("#2ca02c", "collocation (no ODE solves)"),
    "adam": ("#1f77b4", "Adam through the ODE (growing windows)"),
    "lbfgs": ("#d62728", "L-BFGS polish"),
}


def _values(history: dict, key: str) -> np.ndarray:
    """A history series as floats (None, written for infinity, and non-positive values: NaN)."""
    values = np.asarray([np.nan if v is None else v for v in history.get(key) or []], float)
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def phase_chunks(history: dict, chunk: int | None) -> list[tuple[str, int, int]]:
    """(phase, steps, chunks) of every phase that ran, in training order.

    The held-back loss has one value per chunk (`history["validation"]`); a phase of n steps ran
    ceil(n / chunk) chunks. With the chunk size unknown (an old run's config), the chunks are
    shared out in proportion to the steps.
    """
    ran = [(p, len(history.get(p) or [])) for p in PHASE_STYLE if history.get(p)]
    n_val = len(history.get("validation") or [])
    if chunk and chunk > 0:
        counts = [-(-n // chunk) for _, n in ran]
    else:
        total = sum(n for _, n in ran) or 1
        counts = [round(n_val * n / total) for _, n in ran]
    if counts and sum(counts) != n_val:  # a resumed or unusual run: the last phase takes the rest
        counts[-1] = max(0, n_val - sum(counts[:-1]))
    return [(p, n, c) for (p, n), c in zip(ran, counts)]


def training_figure(history: dict | None, chunk: int | None = None) -> Figure | None:
    """UDE training: the loss of every step, phase after phase, each phase in its own colour
    with its step count (left), and the loss on the held-back points after every chunk, which
    decides when a phase stops, coloured by phase (right). `chunk`: optimiser steps per chunk
    (the run's `ude.chunk`)."""
    if not history or not any(history.get(p) for p in PHASE_STYLE):
        return None
    fig = Figure(figsize=(10, 3.4))
    ax, ax_v = fig.subplots(1, 2)
    start = start_v = 0
    for phase, n, n_chunks in phase_chunks(history, chunk):
        color, label = PHASE_STYLE[phase]
        values = _values(history, phase)
        steps = start + np.arange(len(values))
        ax.plot(steps, values, color=color, lw=1, label=f"{label}: {n} steps")
        if start:
            ax.axvline(start, color=color, lw=0.6, ls=":")
        start += len(values)
        val = _values(history, "validation")[start_v : start_v + n_chunks]
        if len(val):
            x = start_v + 1 + np.arange(len(val))
            ax_v.plot(x, val, "o-", ms=3, color=color, label=f"{phase}: {len(val)} chunks")
        start_v += n_chunks
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_title("training loss (each phase stops when held-back points stop improving)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    if start_v:
        ax_v.set_yscale("log")
        ax_v.legend(fontsize=8)
    ax_v.set_xlabel("chunk")
    ax_v.set_ylabel("held-back loss")
    ax_v.set_title("monitored loss per chunk", fontsize=9)
    fig.tight_layout()
    return fig
