"""The report's identifiability section and warnings (partially observed data): which
parameters and unmeasured initial values the data determine (`discovered.json`'s
`identifiability`, computed by `sciml._identify`)."""

from __future__ import annotations

import html
from typing import Any

from ._run import Run


def _e(value: Any) -> str:
    return html.escape(str(value))


def _num(value: Any) -> str:
    return "–" if not isinstance(value, int | float) else f"{value:.4g}"


def never_measured(run: Run) -> set[str]:
    """The states no trajectory of the run measures."""
    ident = run.discovered.get("identifiability")
    if not isinstance(ident, dict):
        return set()
    lists = [set(v) for v in (ident.get("unmeasured") or {}).values() if isinstance(v, list)]
    return set.intersection(*lists) if lists else set()


def identifiability_findings(run: Run) -> list:
    """One warning per discovered term that involves an unmeasured state the data cannot pin
    down; one note per fit whose quantities are not all determined."""
    from ._warnings import Finding

    ident = run.discovered.get("identifiability")
    if not isinstance(ident, dict):
        return []
    out = [
        Finding("warning", "A discovered term rests on an unmeasured state", str(w))
        for w in ident.get("warnings") or []
    ]
    for key, label in (("mechanistic", "mechanistic fit"), ("final", "final model")):
        weak = _weak(ident.get(key))
        if weak:
            out.append(
                Finding(
                    "note",
                    f"Not everything in the {label} is determined by the data",
                    ", ".join(weak) + " (see Identifiability)",
                )
            )
    return out


def _rows(part: dict) -> list[tuple[str, dict]]:
    rows = [(str(name), e) for name, e in (part.get("parameters") or {}).items()]
    for traj, states in (part.get("initial") or {}).items():
        rows += [(f"{state}(t₀), trajectory {traj}", e) for state, e in states.items()]
    return [(name, e) for name, e in rows if isinstance(e, dict)]


def _weak(part: Any) -> list[str]:
    if not isinstance(part, dict):
        return []
    return [
        f"{name} ({e.get('status')})" for name, e in _rows(part) if e.get("status") != "determined"
    ]


def identifiability_section(run: Run) -> str:
    """Per fit, every free parameter and fitted unmeasured initial value with its relative
    standard error and status, and the weakest direction; empty for fully measured data."""
    ident = run.discovered.get("identifiability")
    if not isinstance(ident, dict):
        return ""
    unmeasured = {
        traj: states for traj, states in (ident.get("unmeasured") or {}).items() if states
    }
    body = [
        '<h2 id="identifiability">Identifiability</h2>',
        f"<p>{_e(ident.get('method', ''))}.</p>",
    ]
    if unmeasured:
        listed = "; ".join(f"{_e(t)}: {_e(', '.join(s))}" for t, s in unmeasured.items())
        body.append(f"<p>States never measured, per trajectory: {listed}.</p>")
    for key, label in (("mechanistic", "Mechanistic fit"), ("final", "Final model")):
        part = ident.get(key)
        if not isinstance(part, dict):
            continue
        body.append(f"<h3>{label}</h3>")
        if part.get("note"):
            body.append(f"<p>{_e(part['note'])}</p>")
            continue
        rows = "".join(
            f"<tr><td>{_e(name)}</td><td class=num>{_num(e.get('value'))}</td>"
            f"<td class=num>{_num(e.get('relative_stderr'))}</td><td>{_e(e.get('status'))}</td>"
            "</tr>"
            for name, e in _rows(part)
        )
        body.append(
            "<table><tr><th>quantity</th><th>value</th><th>relative standard error</th>"
            f"<th>status</th></tr>{rows}</table>"
        )
        weakest = part.get("weakest_direction") or {}
        if weakest.get("combination"):
            combo = ", ".join(f"{_e(k)} ({v:+.2f})" for k, v in weakest["combination"].items())
            body.append(
                f"<p>Weakest direction (relative standard error"
                f" {_num(weakest.get('relative_stderr'))}): {combo}.</p>"
            )
    for w in ident.get("warnings") or []:
        body.append(f'<p class="warning">{_e(w)}</p>')
    return "".join(body)
