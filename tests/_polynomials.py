"""Reading a discovered polynomial equation back as monomial -> coefficient (two-state tests)."""

from __future__ import annotations

import sympy as sp

X, Y = sp.symbols("x y")


def terms(equation: str) -> dict[sp.Expr, float]:
    """Monomial -> coefficient of a polynomial right-hand side in x and y."""
    poly = sp.Poly(sp.sympify(equation), X, Y)
    return {X**i * Y**j: float(c) for (i, j), c in zip(poly.monoms(), poly.coeffs())}
