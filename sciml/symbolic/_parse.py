"""Formulas printed by symbolic engines: text -> SymPy, never `eval`.

Engines print formulas in their own dialects: PySR writes `square(x0)`, `x0 ^ 2.0` or
`(x0 * x1) * -0.9001`, Operon writes `((-0.82) * X1)`, PySINDy names library terms `x^2 y`.
They are read by the library's one expression walker (`sciml._expr.walk_expression`, the one
that reads model files) with the engines' function spellings allowed; this module only adapts
PySINDy's term names to it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import sympy as sp

from .._expr import FUNCTIONS, ExpressionError, walk_expression

#: An engine's formula that the walker refuses (the walker's one error type).
FormulaParseError = ExpressionError

__all__ = ["FUNCTIONS", "FormulaParseError", "parse_formula", "parse_library_name"]


def parse_formula(
    text: str, symbols: Mapping[str, sp.Symbol], *, where: str = "formula"
) -> sp.Expr:
    """Parse an engine's formula `text` into SymPy over `symbols` (printed name -> Symbol).

    Raises `FormulaParseError` (`sciml._expr.ExpressionError`) naming what was refused.
    """
    return walk_expression(text, symbols, where=where, engines=True)


_IMPLICIT_PRODUCT = re.compile(r"(?<=[\w).])\s+(?=[\w(])")


def parse_library_name(name: str, symbols: Mapping[str, sp.Symbol]) -> sp.Expr:
    """Parse a PySINDy library term name (`x^2 y`, `sin(1 x)`) into SymPy.

    PySINDy separates factors by spaces and writes powers with `^`; both become SymPy products
    and powers. Custom libraries should name their terms with `function_names` that follow
    the same conventions.
    """
    return parse_formula(_IMPLICIT_PRODUCT.sub("*", name.strip()), symbols, where="library term")
