"""The report and index pages: plain HTML strings, escaped, with inline CSS."""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sympy as sp

from .._errors import InputError
from .._io import write_text
from .._latex import equations_latex
from . import _figures
from ._identifiability import identifiability_section
from ._math import mathml, parse, residual_formula
from ._run import Run, load_run
from ._warnings import Finding, findings, selected_rows, state_scale

REPORT = "report.html"
NAV = (
    '<p class="nav"><a href="#equations">Equations</a> · <a href="#fit">Data and models</a> · '
    '<a href="#residual">Residual</a> · <a href="#pareto">Candidates</a> · '
    '<a href="#training">Training</a> · <a href="#run">The run</a></p>'
)
INDEX = "index.html"

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1400px; padding: 1em 2em 4em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid
#ddd; padding-bottom: 0.2em; } .sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; } th, td { border: 1px solid #ddd;
        padding: 0.3em 0.6em; text-align: left; vertical-align: middle; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.box { border: 2px solid #c62828; background: #fdecea; padding: 0.6em 1em; border-radius: 6px; }
.box.ok { border-color: #2e7d32; background: #edf7ed; }
.box.notes { border-color: #9e9e9e; background: #f7f7f7; margin-top: 0.5em; }
.box li { margin: 0.25em 0; } .warning b { color: #b71c1c; } .note b { color: #555; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
math { font-size: 1.1em; } code { font-size: 0.9em; background: #f5f5f5; padding: 0 0.2em; }
.bad { color: #b71c1c; font-weight: 600; } .muted { color: #777; }
details { margin: 0.5em 0; } .nav a { color: #1565c0; } summary { cursor: pointer; color: #1565c0; }
"""


# -- small pieces -------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return "—"
        return f"{value:.{digits}g}"
    return _e(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], num: Sequence[int] = ()) -> str:
    """A table from already-escaped cells; columns listed in `num` are right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in header)
    head = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if k in num else f"<td>{c}</td>" for k, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _img(fig, alt: str) -> str:
    if fig is None:
        return f'<p class="muted">No figure: {_e(alt)} (the run folder lacks the data).</p>'
    return f'<img src="{_figures.to_data_uri(fig)}" alt="{_e(alt)}">'


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _finished(run: Run) -> str:
    if run.finished:
        return run.finished
    stamp = (run.path / "discovered.json").stat().st_mtime
    return dt.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


# -- sections -----------------------------------------------------------------------------------
def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _findings_box(items: list[Finding]) -> str:
    """Warnings (counted: only they), then notes in a box of their own."""
    warnings = [f for f in items if f.level == "warning"]
    notes = [f for f in items if f.level != "warning"]

    def listed(found: list[Finding]) -> str:
        return "".join(
            f'<li class="{f.level}"><b>{_e(f.title)}</b>: {_e(f.detail)}</li>' for f in found
        )

    if warnings:
        box = (
            f'<div class="box" id="warnings"><b>{_count(len(warnings), "warning")}</b> for the '
            f"reviewer<ul>{listed(warnings)}</ul></div>"
        )
    else:
        box = (
            '<div class="box ok" id="warnings"><b>No warnings.</b> Fit, extrapolation, '
            "uncertainty and data size pass the report's checks.</div>"
        )
    if notes:
        box += (
            f'<div class="box notes" id="notes"><b>{_count(len(notes), "note")}</b>'
            f"<ul>{listed(notes)}</ul></div>"
        )
    return box


def _run_section(run: Run) -> str:
    c, cfg = run.config, run.config.get("config") or {}
    engines = run.discovered.get("engines") or {}
    unavailable = engines.get("unavailable") or {}
    rows = [
        ("run folder", _e(run.path.resolve()) if run.path.is_dir() else "not kept (in memory)"),
        ("finished", _e(_finished(run))),
        ("data file", f"<code>{_e(c.get('data', '—'))}</code>"),
        ("model file", f"<code>{_e(c.get('model_file') or 'none (no theory)')}</code>"),
        ("seed", _fmt(cfg.get("seed"))),
        ("held out", f"{float(cfg.get('holdout', 0) or 0):.0%} of each trajectory's span"),
        ("data", _e(_data_summary(run))),
        ("engines requested", _e(", ".join(engines.get("requested", [])) or "—")),
        ("engines used", _e(", ".join(engines.get("used", [])) or "—")),
    ]
    for name, reason in unavailable.items():
        rows.append((f"engine {_e(name)}", f'<span class="bad">unavailable</span>: {_e(reason)}'))
    versions = run.run.get("versions") or c.get("versions") or {}
    rows.append(("versions", _e(", ".join(f"{k} {v}" for k, v in versions.items()) or "—")))
    timings = run.run.get("timings") or {}
    time_rows = [(_e(k), f"{float(v):.1f} s") for k, v in timings.items()]
    if timings:
        time_rows.append(("<b>total</b>", f"<b>{sum(map(float, timings.values())):.1f} s</b>"))
    return (
        '<h2 id="run">The run</h2>'
        + _table(["", ""], rows)
        + "<h3>Time per stage</h3>"
        + (_table(["stage", "time"], time_rows, num=[1]) if time_rows else "<p>—</p>")
    )


def _data_summary(run: Run) -> str:
    inputs = run.config.get("inputs") or {}
    if run.data is not None:
        return f"{len(run.data)} trajectories, {run.data.n_points} points per state"
    if inputs:
        return f"{inputs.get('n_trajectories')} trajectories, {inputs.get('n_points')} points"
    return "—"


def _equations_section(run: Run) -> str:
    d = run.discovered
    model = run.config.get("model") or {}
    names = list(run.states) + list(model.get("parameters") or d.get("parameters") or {})
    declared = model.get("equations") or {}
    mech = (d.get("mechanistic") or {}).get("equations") or {}
    final = d.get("equations") or {}
    rows = []
    for s in run.states:
        rows.append(
            (
                _e(s),
                mathml(
                    parse(declared.get(s, ""), names, where=s), lhs=s, text=declared.get(s, "—")
                ),
                mathml(parse(mech.get(s, ""), run.states, where=s), lhs=s, text=mech.get(s, "—")),
                mathml(parse(final.get(s, ""), run.states, where=s), lhs=s, text=final.get(s, "—")),
            )
        )
    params = d.get("parameters") or {}
    fixed = set(model.get("fixed") or [])
    prow = [
        (_e(k), _fmt(v, 6), "fixed (declared known)" if k in fixed else "fitted")
        for k, v in params.items()
    ]
    return (
        '<h2 id="equations">Equations</h2>'
        "<p>Your model as declared, the mechanistic fit (its parameters fitted), and the final "
        "model: the mechanistic part plus the discovered residual, every constant refit to the "
        "data and needless terms pruned.</p>"
        + _table(["state", "your model", "mechanistic fit", "final model"], rows)
        + _latex_block(run)
        + (_table(["parameter", "mechanistic fit", ""], prow, num=[1]) if prow else "")
        + _metrics_table(run)
        + _coefficients_table(run)
    )


def _latex_block(run: Run) -> str:
    """The final equations in LaTeX (`discovered.json`'s `latex`; computed for older runs), as
    text to copy: the page typesets with MathML and loads nothing."""
    d = run.discovered
    latex = d.get("latex")
    if not isinstance(latex, dict):
        latex = equations_latex(d.get("equations") or {}, run.states)
    rows = [(_e(s), f"<code>{_e(v)}</code>") for s, v in latex.items() if isinstance(v, str)]
    if not rows:
        return ""
    return (
        '<details id="latex"><summary>The final model in LaTeX</summary>'
        + _table(["state", "LaTeX"], rows)
        + "</details>"
    )


def _metrics_table(run: Run) -> str:
    m = run.discovered.get("metrics") or {}
    scale = state_scale(run)
    header, rows = ["model"], []
    for s in run.states:
        header += [f"RMSE {_e(s)}", f"relative {_e(s)}"]
    has_holdout = any(k.endswith("_rmse_holdout") for k in m)
    if has_holdout:
        header += [f"held-out RMSE {_e(s)}" for s in run.states]
    header.append("bounded past the data")
    bounded = m.get("extrapolation_bounded") or {}
    for model in ("mechanistic", "ude", "final"):
        if f"{model}_rmse" not in m:
            continue
        row = [_figures.MODEL_STYLE[model]["label"]]
        for s in run.states:
            v = (m[f"{model}_rmse"] or {}).get(s)
            sc = scale.get(s)
            row += [_fmt(v), f"{v / sc:.1%}" if v is not None and sc else "—"]
        if has_holdout:
            row += [_fmt((m.get(f"{model}_rmse_holdout") or {}).get(s)) for s in run.states]
        b = bounded.get(model)
        row.append('<span class="bad">no</span>' if b is False else _fmt(b))
        rows.append(row)
    gap = m.get("final_vs_ude_extrapolation") or {}
    note = ""
    if gap:
        parts = ", ".join(f"{_e(s)} {float(v):.0%}" for s, v in gap.items() if v is not None)
        note = f"<p>Final model vs UDE over the extrapolation horizon (relative): {parts}.</p>"
    return (
        '<h3>Fit errors</h3><p class="muted">Relative: RMSE over the standard deviation of '
        "the state's data.</p>" + _table(header, rows, num=range(1, len(header) - 1)) + note
    )


def _bootstrap(run: Run) -> dict[tuple[str, sp.Expr], tuple[float | None, float | None]]:
    """(state, term) -> (SINDy coefficient, bootstrap std) for SINDy-selected residuals."""
    out = {}
    for state, row in selected_rows(run.candidates).items():
        if row.get("engine") != "sindy":
            continue
        coefs = _json(row.get("coefficients"))
        for term, std in _json(row.get("coef_std")).items():
            expr = parse(term, run.states, where=f"coef_std.{state}")
            if expr is not None:
                out[(state, expr)] = (coefs.get(term), std)
    return out


def _json(value: Any) -> dict:
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def _coefficients_table(run: Run) -> str:
    terms = run.discovered.get("terms") or []
    if not terms:
        return ""
    boot = _bootstrap(run)
    rows = []
    for t in terms:
        state = str(t.get("state"))
        expr = parse(str(t.get("term")), list(run.states) + _inner(t), where="terms")
        coef, err = t.get("coefficient"), t.get("stderr")
        rel = "—"
        if t.get("kept") and isinstance(coef, int | float) and isinstance(err, int | float):
            r = err / abs(coef) if coef else math.inf
            rel = f'<span class="bad">{r:.0%}</span>' if r > 0.25 else f"{r:.1%}"
        sindy = boot.get((state, expr)) if expr is not None else None
        sindy_cell = f"{_fmt(sindy[0])} ± {_fmt(sindy[1], 2)}" if sindy else "—"
        rows.append(
            (
                _e(state),
                mathml(expr, text=str(t.get("term"))),
                _e(t.get("origin", "")),
                _fmt(coef, 6) if t.get("kept") else '<span class="muted">pruned</span>',
                _fmt(err, 3),
                rel,
                sindy_cell,
                _fmt(bool(t.get("kept"))),
            )
        )
    return (
        '<h3>Coefficients of the final model</h3><p class="muted">Standard errors from the '
        "refit through the ODE; where the selected formula came from SINDy, also its own "
        "coefficient ± the bootstrap (ensemble) standard deviation. Constants inside terms "
        "(e.g. k in tanh(k·x)) were refit too; the terms show their refit values.</p>"
        + _table(
            [
                "state",
                "term",
                "origin",
                "coefficient",
                "stderr",
                "stderr / |coef|",
                "SINDy ± bootstrap std",
                "kept",
            ],
            rows,
            num=[3, 4, 5, 6],
        )
    )


def _ensemble_section(run: Run) -> str:
    """Each term any ensemble member kept: how often, and its coefficient's spread."""
    ens = run.discovered.get("ensemble")
    if not isinstance(ens, dict) or not ens.get("terms"):
        return ""
    final = {
        (str(t.get("state")), str(t.get("term")))
        for t in run.discovered.get("terms") or []
        if t.get("kept") and t.get("origin") == "discovered"
    }
    rows = []
    for t in ens["terms"]:
        state, text = str(t.get("state")), str(t.get("term"))
        expr = parse(text, list(run.states) + _inner(t), where="ensemble.terms")
        lo, hi = (t.get("interval") or [None, None])[:2]
        freq = t.get("frequency")
        rows.append(
            (
                _e(state),
                mathml(expr, text=text),
                f"{freq:.0%}" if isinstance(freq, int | float) else "—",
                _fmt(t.get("median"), 4),
                f"[{_fmt(lo, 4)}, {_fmt(hi, 4)}]",
                _fmt((state, text) in final),
            )
        )
    failed = ens.get("failed") or []
    note = (
        f" {len(failed)} member(s) could not be distilled: {_e('; '.join(failed))}."
        if failed
        else ""
    )
    level = ens.get("level", 0.9)
    return (
        f'<h3>Ensemble of {_e(ens.get("members"))} UDEs</h3><p class="muted">UDEs trained '
        "together in one compiled program, each from its own seed and bootstrap resample of the "
        "data, each distilled and refit to its resample. Frequency: the share of members whose "
        f"final model keeps the term; interval: the central {level:.0%} of its coefficient over "
        f"those members.{note}</p>"
        + _table(
            ["state", "term", "frequency", "median", f"{level:.0%} interval", "in final model"],
            rows,
            num=[2, 3, 4],
        )
    )


def _inner(term: dict) -> list[str]:
    """Names of refit inner constants in a term's text, as runs written before they were
    inlined spell them (`k_<state>_<k>_<j>`); none in newer runs."""
    return sorted(set(re.findall(r"\bk_\w+", str(term.get("term", "")))))


def _fit_section(run: Run) -> str:
    return (
        '<h2 id="fit">Data and models</h2><p>Per state and trajectory: data (dots; hollow: held '
        "out), the mechanistic fit, the UDE and the final model, simulated past the data. "
        "Shaded orange: held-out data; grey: beyond the data.</p>"
        + _img(_figures.fit_figure(run), "data and model trajectories")
    )


def _training_section(run: Run) -> str:
    chunk = ((run.config.get("config") or {}).get("ude") or {}).get("chunk")
    fig = _figures.training_figure(run.history, chunk if isinstance(chunk, int) else None)
    if fig is None:
        return '<h2 id="training">Training</h2><p>No UDE training history in this run.</p>'
    return (
        '<h2 id="training">Training</h2><p>The UDE\'s loss through its phases: collocation on '
        "smoothed derivatives, Adam through the ODE on growing windows, an L-BFGS polish. Each "
        "phase stops once the loss on held-back points stops improving.</p>"
        + _img(fig, "UDE training loss curves")
    )


def _residual_section(run: Run) -> str:
    parts = [
        '<h2 id="residual">The residual</h2><p>What the network learnt against the '
        "formula selected for it (as fitted to the network) and the refit formula that the "
        "final model uses.</p>"
    ]
    for state in run.residual_states:
        r = run.discovered["residual"][state]
        selected = parse(r.get("equation", ""), run.states, where=f"residual.{state}")
        final = residual_formula(run.discovered, state, run.states)
        rows = [
            (
                "selected",
                _e(r.get("engine")),
                _fmt(r.get("complexity")),
                _fmt(r.get("loss")),
                mathml(selected, text=r.get("equation", "")),
            ),
            ("refit", "", "", "", mathml(final, text=r.get("final", ""))),
        ]
        parts.append(f"<h3>d{_e(state)}/dt</h3>")
        parts.append(_table(["formula", "engine", "complexity", "loss", ""], rows, num=[2, 3]))
        parts.append(
            _img(_figures.residual_figure(run, state, selected, final), f"residual of d{state}/dt")
        )
    return "".join(parts) if run.residual_states else ""


def _pareto_section(run: Run) -> str:
    if not run.residual_states:
        return ""
    parts = ['<h2 id="pareto">Candidates: Pareto fronts and pruning</h2>']
    cands = run.candidates
    for state in run.residual_states:
        parts.append(f"<h3>d{_e(state)}/dt</h3>")
        fig = _figures.pareto_figure(cands, state) if cands is not None else None
        parts.append(_img(fig, f"Pareto front of d{state}/dt"))
        if cands is not None:
            rows = cands[cands["state"].astype(str) == state].sort_values(["engine", "complexity"])
            table = _table(
                ["engine", "complexity", "loss", "score", "equation", "selected"],
                [
                    (
                        _e(r["engine"]),
                        _fmt(r["complexity"]),
                        _fmt(r["loss"]),
                        _fmt(r["score"]),
                        f"<code>{_e(r['equation'])}</code>",
                        "★" if str(r["selected"]).lower() == "true" else "",
                    )
                    for _, r in rows.iterrows()
                ],
                num=[1, 2, 3],
            )
            parts.append(f"<details><summary>all {len(rows)} candidates</summary>{table}</details>")
    pruned = run.discovered.get("pruned") or []
    parts.append("<h3>Pruned terms</h3>")
    if pruned:
        parts.append(
            _table(
                ["state", "term", "coefficient before removal", "BIC before", "BIC after", "why"],
                [
                    (
                        _e(p.get("state")),
                        mathml(
                            parse(str(p.get("term")), run.states, where="pruned"),
                            text=str(p.get("term")),
                        ),
                        _fmt(p.get("coefficient")),
                        _fmt(p.get("bic_before"), 6),
                        _fmt(p.get("bic_after"), 6),
                        _e(p.get("reason", "BIC")),
                    )
                    for p in pruned
                ],
                num=[2, 3, 4],
            )
        )
    else:
        parts.append("<p>None: every discovered term lowered the BIC.</p>")
    refit = run.discovered.get("refit") or {}
    if refit:
        parts.append(
            f"<p>Refit: SSE {_fmt(refit.get('sse'))}, BIC {_fmt(refit.get('bic'), 6)} over "
            f"{_fmt(refit.get('n'))} residuals; {len(refit.get('candidates_tried') or [])} "
            "combinations of candidates tried.</p>"
        )
    return "".join(parts)


def _review_status(d: dict) -> str:
    """`not reviewed`, `awaiting review` or `reviewed (revision N by WHO)`."""
    review = d.get("review") or {}
    status = str(review.get("status") or "not reviewed")
    history = review.get("history") or []
    if status == "reviewed" and history:
        return f"reviewed (revision {review.get('revision')} by {history[-1].get('reviewer')})"
    return status


def _review_entry(entry: dict) -> str:
    before, after = entry.get("fit_before") or {}, entry.get("fit_after") or {}
    decided = [(t, "rejected") for t in entry.get("rejected") or []]
    decided += [(t, "kept (never pruned)") for t in entry.get("kept") or []]
    decided += [(t, "added") for t in entry.get("added") or []]
    decided += [
        (f"{p.get('state')}:{p.get('term')}", "pruned by the refit")
        for p in entry.get("pruned") or []
    ]
    rows = [(f"<code>{_e(t)}</code>", _e(what)) for t, what in decided]
    worse = entry.get("worse") or {}
    fit_rows = []
    for s in before.get("rmse") or after.get("rmse") or {}:
        b, a = (before.get("rmse") or {}).get(s), (after.get("rmse") or {}).get(s)
        change = f"×{a / b:.2f}" if isinstance(a, float | int) and b else "—"
        if s in worse:
            change = f'<span class="bad">{change} worse</span>'
        fit_rows.append(
            (
                f"RMSE {_e(s)}",
                _fmt(b),
                _fmt(a),
                change,
            )
        )
    fit_rows.append(("BIC of the refit", _fmt(before.get("bic")), _fmt(after.get("bic")), ""))
    eq_rows = [
        (
            _e(s),
            f"<code>{_e(eq)}</code>",
            f"<code>{_e((after.get('equations') or {}).get(s))}</code>",
        )
        for s, eq in (before.get("equations") or {}).items()
    ]
    verdict = (
        '<p class="bad">The fit is worse after this decision: '
        + _e(", ".join(f"{s} ×{v:.2g}" for s, v in worse.items()))
        + " (final RMSE after / before).</p>"
        if worse
        else "<p>The fit is not worse after this decision.</p>"
    )
    note = f"<p>Note: {_e(entry.get('note'))}</p>" if entry.get("note") else ""
    return (
        f"<h3>Revision {_e(entry.get('revision'))} (from revision {_e(entry.get('based_on'))})"
        f": decided by {_e(entry.get('reviewer'))}, {_e(entry.get('at'))}"
        f" (via {_e(entry.get('via'))})</h3>"
        + note
        + (_table(["term", "decision"], rows) if rows else "<p>Every term accepted.</p>")
        + verdict
        + _table(["", "before", "after", "change"], fit_rows, num=[1, 2])
        + _table(["state", "before", "after"], eq_rows)
    )


def _review_section(run: Run) -> str:
    review = run.discovered.get("review")
    if not review:
        return ""
    history = review.get("history") or []
    status = _review_status(run.discovered)
    waiting = ""
    if review.get("status") == "awaiting review":
        waiting = (
            f"<p>Awaiting a reviewer's decision since {_e(review.get('requested_at'))}"
            f"{': ' + _e(review.get('message')) if review.get('message') else ''}. Decide in the "
            "Prefect UI, or with <code>sciml review DIR --reject state:term --keep state:term "
            "--add state:term</code>.</p>"
        )
    return (
        f'<h2 id="review">Review: {_e(status)}</h2>'
        + waiting
        + (
            "<p>The reviewer's decisions, latest first: the run's selection refit under them "
            "(no UDE retraining). Every revision is kept in <code>revisions/N/</code>.</p>"
            if history
            else ""
        )
        + "".join(_review_entry(e) for e in reversed(history))
    )


# -- public -------------------------------------------------------------------------------------
def report_html(run: Run) -> str:
    """The report of `run` as one self-contained HTML page."""
    title = f"Discovery report: {run.path.resolve().name}"
    data = Path(str(run.config.get("data", ""))).name
    body = (
        f'<h1>{_e(title)}</h1><p class="sub">{_e(data)} · finished {_e(_finished(run))}</p>'
        + _findings_box(findings(run))
        + _review_section(run)
        + NAV
        + _equations_section(run)
        + _ensemble_section(run)
        + _fit_section(run)
        + identifiability_section(run)
        + _residual_section(run)
        + _pareto_section(run)
        + _training_section(run)
        + _run_section(run)
    )
    return _page(title, body)


def render_report(run_dir: str | os.PathLike[str]) -> Path:
    """(Re)render `run_dir/report.html` from the run's files; returns its path.

    Raises `InputError` when `run_dir` holds no discovery run (`discovered.json`).
    """
    run = load_run(run_dir)
    path = run.path / REPORT
    write_text(path, report_html(run))
    return path


def _runs(runs_dir: Path) -> list[Path]:
    """Run folders directly under `runs_dir` (and `runs_dir` itself when it is one)."""
    found = [p for p in sorted(runs_dir.iterdir()) if (p / "discovered.json").is_file()]
    if (runs_dir / "discovered.json").is_file():
        found.insert(0, runs_dir)
    return sorted(found, key=lambda p: (p / "discovered.json").stat().st_mtime)


def _index_row(path: Path, index_dir: Path, states: list[str]) -> tuple[list[str], list[str]]:
    """One run's cells, and its states (rendering its report when it is missing or stale)."""
    link = os.path.relpath(path / REPORT, index_dir)
    try:
        run = load_run(path)
        report = path / REPORT
        if (
            not report.exists()
            or report.stat().st_mtime < (path / "discovered.json").stat().st_mtime
        ):
            write_text(report, report_html(run))
    except (InputError, OSError, ValueError, KeyError) as err:
        return [f"{_e(path.name)}", "—", "—", "—", f'<span class="bad">{_e(err)}</span>', "—"], []
    items = findings(run)
    warned = [f.title for f in items if f.level == "warning"]
    title = _e("; ".join(warned))
    cells = [
        f'<a href="{_e(link)}">{_e(path.name)}</a>',
        _e(_finished(run)),
        _e(Path(str(run.config.get("data", "—"))).name),
        _fmt((run.config.get("config") or {}).get("seed")),
        f'<span class="bad" title="{title}">{len(warned)}</span>' if warned else "0",
        _e(_review_status(run.discovered)),
    ]
    eqs = run.discovered.get("equations") or {}
    rmse = (run.discovered.get("metrics") or {}).get("final_rmse") or {}
    for s in states:
        eq = eqs.get(s)
        cell = mathml(parse(eq, run.states, where=s), lhs=s, text=eq) if eq else "—"
        cells.append(cell + f'<div class="muted">RMSE {_fmt(rmse.get(s), 3)}</div>')
    return cells, run.states


def render_index(runs_dir: str | os.PathLike[str]) -> Path:
    """Write `runs_dir/index.html`: every run in the folder, oldest first, its final equations
    side by side with links to the runs' reports (rendered here when missing or stale)."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    runs = _runs(root)
    states: list[str] = []
    for p in runs:  # the union of states, in first-seen order
        try:
            with open(p / "discovered.json") as f:
                for s in json.load(f).get("equations") or {}:
                    if s not in states:
                        states.append(s)
        except (OSError, ValueError):
            continue
    rows = [_index_row(p, root, states)[0] for p in runs]
    rows = [r + ["—"] * (6 + len(states) - len(r)) for r in rows]
    header = ["run", "finished", "data", "seed", "warnings", "review"]
    header += [f"d{_e(s)}/dt" for s in states]
    body = (
        f"<h1>Discovery runs in {_e(root.resolve().name)}</h1>"
        f'<p class="sub">{len(runs)} run(s), oldest first</p>'
        + (_table(header, rows) if runs else "<p>No discovery runs (no discovered.json) here.</p>")
    )
    path = root / INDEX
    write_text(path, _page(f"Discovery runs: {root.resolve().name}", body))
    return path
