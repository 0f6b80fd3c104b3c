"""Equations as SymPy expressions and LaTeX, from the text a run writes (`discovered.json`).

Text is read by the model-file parser (`sciml._expr.parse_expression`, never `sympify`): state
names SymPy keeps for itself (`S`, `I`, `E`, `N`, `beta`, ...) stay plain real symbols, and a
tampered run folder cannot run code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import sympy as sp

from ._errors import ModelFileError
from ._expr import parse_expression

# SymPy's printer writes some whitelisted functions with capitals; the parser wants them as a
# model file spells them.
_SPELLING = {"Abs": "abs", "Min": "min", "Max": "max"}
_SPELLING_RE = re.compile(r"\b(" + "|".join(_SPELLING) + r")\(")


def model_spelling(text: str) -> str:
    """`text` with SymPy's `Abs(`, `Min(`, `Max(` written as a model file writes them."""
    return _SPELLING_RE.sub(lambda m: _SPELLING[m.group(1)] + "(", text)


def symbol_table(names: Sequence[str]) -> dict[str, sp.Symbol]:
    """Real symbols for `names` plus time `t`, as the model parser makes them."""
    table = {n: sp.Symbol(n, real=True) for n in names if n != "t"}
    table["t"] = sp.Symbol("t", real=True)
    return table


def equation_expressions(equations: Mapping[str, str], names: Sequence[str]) -> dict[str, sp.Expr]:
    """Each right-hand side in `equations` (state -> text) as a SymPy expression over `names`.

    Raises `ModelFileError` naming the state whose text cannot be read.
    """
    table = symbol_table(names)
    return {
        s: parse_expression(model_spelling(str(text)), table, where=s)
        for s, text in equations.items()
    }


def latex_equation(state: str, rhs: sp.Expr) -> str:
    """`\\frac{d state}{d t} = rhs` in LaTeX (the state's name as SymPy prints a symbol)."""
    lhs = sp.latex(sp.Symbol(state, real=True))
    return rf"\frac{{d {lhs}}}{{d t}} = {sp.latex(rhs)}"


def equations_latex(equations: Mapping[str, str], names: Sequence[str]) -> dict[str, str | None]:
    """`latex_equation` of every state in `equations` (state -> right-hand side text); None for
    a text the parser cannot read (a run's results are not lost to their typesetting)."""
    out: dict[str, str | None] = {}
    for state, text in equations.items():
        try:
            (expr,) = equation_expressions({state: text}, names).values()
        except ModelFileError:
            out[state] = None
            continue
        out[state] = latex_equation(state, expr)
    return out
