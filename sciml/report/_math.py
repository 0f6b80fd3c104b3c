"""Equations from a run's files: safe parsing, rounding for display, MathML, evaluation."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import sympy as sp

from .._errors import ModelFileError
from .._expr import parse_expression
from .._latex import model_spelling, symbol_table

_MATHML_NS = "http://www.w3.org/1998/Math/MathML"


def parse(text: str, names: Sequence[str], *, where: str) -> sp.Expr | None:
    """Parse a machine-written formula over `names` (and `t`); None when it cannot be read.

    Parsed by the model-file parser (never evaluated as Python), so a tampered run folder
    cannot run code when its report is rendered.
    """
    if not isinstance(text, str):
        return None
    source = model_spelling(text)
    try:
        return parse_expression(source, symbol_table(names), where=where)
    except ModelFileError:
        return None


def rounded(expr: sp.Expr, digits: int = 4) -> sp.Expr:
    """`expr` with every floating-point number rounded to `digits` significant digits."""
    return expr.xreplace({f: sp.Float(float(f), digits) for f in expr.atoms(sp.Float)})


def mathml(expr: sp.Expr | None, *, lhs: str | None = None, text: str = "") -> str:
    """Inline MathML for `expr` (numbers rounded), optionally as `d lhs / dt = expr`.

    An expression that could not be parsed is shown as its text in a code element.
    """
    if expr is None:
        return f"<code>{html.escape(text)}</code>"
    body = sp.printing.mathml(rounded(expr), printer="presentation")
    if lhs is not None:
        name = html.escape(lhs)
        body = (
            f"<mfrac><mrow><mi>d</mi><mi>{name}</mi></mrow><mrow><mi>d</mi><mi>t</mi></mrow>"
            f"</mfrac><mo>=</mo>{body}"
        )
    return f'<math xmlns="{_MATHML_NS}"><mrow>{body}</mrow></math>'


def evaluate(expr: sp.Expr, columns: dict[str, np.ndarray], n: int) -> np.ndarray:
    """`expr` at `n` points, its symbols taken from `columns` (name -> array of length n).

    Missing symbols or numerical failure give NaN rather than an exception: the report shows
    what it can.
    """
    syms = sorted(expr.free_symbols, key=lambda s: s.name)
    if any(s.name not in columns for s in syms):
        return np.full(n, np.nan)
    fn = sp.lambdify(syms, expr, modules="numpy")
    with np.errstate(all="ignore"):
        try:
            value = np.asarray(fn(*[np.asarray(columns[s.name], float) for s in syms]), float)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            return np.full(n, np.nan)
    return np.broadcast_to(value, (n,)).copy()


def residual_formula(discovered: dict, state: str, states: Sequence[str]) -> sp.Expr | None:
    """The refit residual of `state` with every number inlined.

    Runs written before the constants inside terms were inlined name them in `residual.final`
    by their refit parameters, which the report cannot evaluate; the numbers are then recovered
    from the final equation by removing its kept theory terms (monomials the declared model has).
    """
    entry = discovered.get("residual", {}).get(state, {})
    direct = parse(entry.get("final", ""), states, where=f"residual.{state}.final")
    if direct is not None:
        return direct
    final = parse(discovered.get("equations", {}).get(state, ""), states, where=state)
    if final is None:
        return None
    table = symbol_table(states)
    theory = {
        parse(t["term"], states, where=f"terms.{state}")
        for t in discovered.get("terms", [])
        if t.get("state") == state and t.get("kept") and t.get("origin") == "theory"
    }
    theory.discard(None)
    kept = []
    for term in sp.Add.make_args(sp.expand(final)):
        _, rest = term.as_coeff_Mul()
        if rest not in theory:
            kept.append(term)
    expr = sp.Add(*kept)
    return expr if expr.free_symbols <= set(table.values()) else None
