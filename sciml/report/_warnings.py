"""What a reviewer must see first: poor fits, divergence, wide uncertainty, thin data."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Literal

import numpy as np
import pandas as pd

from ._identifiability import identifiability_findings, never_measured
from ._run import Run

POOR_FIT_RATIO = 2.0  # final RMSE over the UDE's
POOR_FIT_RELATIVE = 0.10  # final RMSE over the spread (std) of the state's data
RATIO_FLOOR = 0.02  # ... but a ratio alone needs at least this relative RMSE to matter
WIDE_UNCERTAINTY = 0.25  # stderr / |coefficient|
FEW_POINTS = 15
EXTRAPOLATION_GAP = 0.5  # relative distance of final and UDE predictions past the data


@dataclasses.dataclass(frozen=True)
class Finding:
    level: Literal["warning", "note"]
    title: str
    detail: str


def _num(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def state_scale(run: Run) -> dict[str, float]:
    """Spread (standard deviation) of each state's data, for relative errors."""
    if run.data is not None:
        ys = np.concatenate([tr.y for tr in run.data.trajectories])
        return {s: float(np.std(ys[:, j])) for j, s in enumerate(run.data.states)}
    if run.predictions is not None:
        ude = run.predictions[run.predictions["model"] == "ude"]
        if len(ude):
            return {s: float(ude[s].std()) for s in run.states if s in ude}
    return {}


def _fit_findings(run: Run, suffix: str, where: str) -> list[Finding]:
    metrics = run.discovered.get("metrics", {})
    final, ude = metrics.get(f"final_rmse{suffix}", {}), metrics.get(f"ude_rmse{suffix}", {})
    scale = state_scale(run)
    unmeasured = never_measured(run)  # no RMSE to give: nothing was measured
    out = []
    for state, value in final.items():
        f, u = _num(value), _num(ude.get(state))
        if f is None and state in unmeasured:
            continue
        if f is None:
            out.append(
                Finding(
                    "warning",
                    f"No fit error for {state} {where}",
                    "the final model could not be simulated there (RMSE missing)",
                )
            )
            continue
        s = scale.get(state)
        rel = f / s if s else None
        reasons = []
        if rel is not None and rel > POOR_FIT_RELATIVE:
            reasons.append(f"RMSE {f:.3g} is {rel:.0%} of the data's spread ({s:.3g})")
        if u and f > POOR_FIT_RATIO * u and (rel is None or rel > RATIO_FLOOR):
            reasons.append(f"RMSE {f:.3g} is {f / u:.1f}× the UDE's ({u:.3g})")
        if reasons:
            out.append(Finding("warning", f"Poor fit of {state} {where}", "; ".join(reasons)))
    return out


def _uncertainty_findings(run: Run) -> list[Finding]:
    out = []
    for t in run.discovered.get("terms", []):
        if not t.get("kept"):
            continue
        coef, err = _num(t.get("coefficient")), _num(t.get("stderr"))
        label = f"{t.get('term')} in d{t.get('state')}/dt"
        if err is None:
            out.append(
                Finding(
                    "warning",
                    f"Uncertainty unknown: {label}",
                    "the refit could not estimate this coefficient's standard error",
                )
            )
        elif coef is not None and err > WIDE_UNCERTAINTY * abs(coef):
            rel = err / abs(coef) if coef else math.inf
            out.append(
                Finding(
                    "warning",
                    f"Wide uncertainty: {label}",
                    f"coefficient {coef:.4g} ± {err:.2g} ({rel:.0%})",
                )
            )
    for state, row in selected_rows(run.candidates).items():
        if row.get("engine") != "sindy":
            continue
        coefs, stds = _json_dict(row.get("coefficients")), _json_dict(row.get("coef_std"))
        for term, std in stds.items():
            c, s = _num(coefs.get(term)), _num(std)
            if c and s is not None and s > WIDE_UNCERTAINTY * abs(c):
                out.append(
                    Finding(
                        "warning",
                        f"Unstable SINDy term: {term} in d{state}/dt",
                        f"bootstrap coefficient {c:.4g} ± {s:.2g} ({s / abs(c):.0%})",
                    )
                )
    return out


def _json_dict(value) -> dict:
    if isinstance(value, dict):
        return value
    if not isinstance(value, str) or not value.strip():
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def selected_rows(candidates: pd.DataFrame | None) -> dict[str, dict]:
    """The selected candidate of each state in the Pareto table, as a dict of its columns."""
    if candidates is None or "selected" not in candidates:
        return {}
    sel = candidates[candidates["selected"].astype(str).str.lower() == "true"]
    return {str(r["state"]): r.to_dict() for _, r in sel.iterrows()}


def findings(run: Run) -> list[Finding]:
    """Every warning and note for `run`, warnings first."""
    d = run.discovered
    out = []
    if isinstance(d.get("partial"), dict):
        out.append(Finding("warning", "Partial results", str(d["partial"].get("reason", ""))))
    out += identifiability_findings(run)
    out += _fit_findings(run, "", "in the training window")
    out += _fit_findings(run, "_holdout", "on the held-out data")
    bounded = d.get("metrics", {}).get("extrapolation_bounded", {})
    if bounded.get("final") is False:
        out.append(
            Finding(
                "warning",
                "The final model diverges in extrapolation",
                "its simulation past the data fails or leaves 10× the data's range",
            )
        )
    if bounded.get("ude") is False:
        out.append(
            Finding(
                "note",
                "The UDE diverges in extrapolation",
                "its simulation past the data fails or leaves 10× the data's range",
            )
        )
    out += _uncertainty_findings(run)
    n = run.points_per_state()
    if n is not None and n < FEW_POINTS:
        out.append(
            Finding(
                "warning",
                f"Few data points: {n} per state",
                f"fewer than {FEW_POINTS}: the discovered terms rest on little data",
            )
        )
    for engine, reason in (d.get("engines", {}).get("unavailable") or {}).items():
        out.append(Finding("warning", f"Engine {engine} unavailable", str(reason)))
    gap = d.get("metrics", {}).get("final_vs_ude_extrapolation", {})
    for state, value in gap.items():
        g = _num(value)
        if g is not None and g > EXTRAPOLATION_GAP:
            out.append(
                Finding(
                    "note",
                    f"Final model and UDE disagree past the data on {state}",
                    f"relative difference {g:.0%} over the extrapolation horizon",
                )
            )
    if not d.get("residual"):
        out.append(Finding("note", "No residual", "a plain mechanistic fit: nothing discovered"))
    out += [Finding("note", "Incomplete run folder", note) for note in run.notes]
    out += _review_findings(d)
    return sorted(out, key=lambda f: f.level != "warning")


def _review_findings(d: dict) -> list[Finding]:
    """The latest review's effect on the fit, and a review still awaited."""
    review = d.get("review") or {}
    if review.get("status") == "awaiting review":
        return [Finding("note", "Awaiting review", "no reviewer has decided on this run yet")]
    history = review.get("history") or []
    if not history:
        return []
    last = history[-1]
    decided = ", ".join(
        f"{what} {t}"
        for what, key in (("rejected", "rejected"), ("kept", "kept"), ("added", "added"))
        for t in last.get(key) or []
    )
    before = (last.get("fit_before") or {}).get("rmse") or {}
    after = (last.get("fit_after") or {}).get("rmse") or {}
    out = []
    for state, ratio in (last.get("worse") or {}).items():
        b, a = _num(before.get(state)), _num(after.get(state))
        rmse = f"final RMSE {b:.3g} → {a:.3g} (×{ratio:.3g})" if a and b else "no fit after"
        out.append(
            Finding(
                "warning",
                f"The review worsened the fit of {state}",
                f"revision {last.get('revision')} by {last.get('reviewer')}"
                f" ({decided or 'every term accepted'}): {rmse}",
            )
        )
    return out
