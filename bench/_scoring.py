"""Scoring for the discovery suite (bench/suite.py), written from the benchmark protocol in
ODEBench's benchmark (as in the ODEFormer paper; its cases are not in this repository).

- Equations are SymPy strings over the state names, parsed with an explicit `local_dict` of the
  states (so `x0`, `E`, `S`, ... are plain symbols, never SymPy objects).
- `simulate` integrates a right-hand side with SciPy (LSODA, which switches to a stiff method when
  needed; Radau as a fallback) from a given initial state over given times. A solve that raises,
  fails, returns non-finite values, leaves the blow-up bound, or runs past its time limit is a
  failure (`None`).
- `r2` is the variance-weighted R² of the protocol, 1 − ΣSSE/ΣSST summed over states, against
  the noise-free trajectory of the true system; −inf for a failed solve. Solved means R² ≥ 0.9.
- `exact_terms` compares, state by state, the sets of additive terms with the numbers stripped
  (the rule is at `term_shapes`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import sympy as sp
from scipy.integrate import solve_ivp

SOLVED = 0.9
RTOL, ATOL = 1e-9, 1e-11
# A placeholder for every number inside a term (a Dummy, so it can never equal a state symbol).
_C = sp.Dummy("c")


class _Abort(Exception):
    """Raised inside the right-hand side to stop a solve (time limit, non-finite values)."""


# -- parsing -----------------------------------------------------------------------------------
def state_symbols(states: Sequence[str]) -> dict[str, sp.Symbol]:
    return {s: sp.Symbol(s) for s in states}


def parse(text: str, states: Sequence[str]) -> sp.Expr:
    """A SymPy expression from `text`, the state names read as plain symbols."""
    from sympy.parsing.sympy_parser import parse_expr

    return sp.sympify(parse_expr(str(text), local_dict=state_symbols(states)))


def parse_system(equations: Mapping[str, str], states: Sequence[str]) -> dict[str, sp.Expr]:
    """Every state's right-hand side (a state the mapping lacks is taken as 0)."""
    return {s: parse(equations.get(s, "0"), states) for s in states}


# -- integration -------------------------------------------------------------------------------
def simulate(
    rhs: Mapping[str, sp.Expr],
    states: Sequence[str],
    y0: Sequence[float],
    t: np.ndarray,
    *,
    bound: float = math.inf,
    time_limit: float = 60.0,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> np.ndarray | None:
    """The trajectory (len(t) × states) of dx/dt = rhs(x) from `y0`, or None when the solve
    fails: an error, a non-finite value, |x| > `bound` anywhere, or more than `time_limit`
    seconds of wall time (per method tried)."""
    syms = [sp.Symbol(s) for s in states]
    exprs = [sp.sympify(rhs[s]) for s in states]
    try:
        f = sp.lambdify(syms, exprs, modules="numpy")
    except Exception:  # noqa: BLE001 - anything unprintable is a failed model
        return None
    t = np.asarray(t, dtype=float)
    y0 = np.asarray(y0, dtype=float)

    for method in ("LSODA", "Radau"):
        deadline = time.monotonic() + time_limit

        def fun(_t, y, f=f, deadline=deadline):
            if time.monotonic() > deadline:
                raise _Abort("time limit")
            with np.errstate(all="ignore"):
                dy = np.array([float(v) for v in np.broadcast_to(f(*y), (len(y),))])
            if not np.all(np.isfinite(dy)):
                raise _Abort("non-finite derivative")
            return dy

        def escaped(_t, y):
            return bound - np.max(np.abs(y))

        escaped.terminal = True
        try:
            sol = solve_ivp(
                fun,
                (t[0], t[-1]),
                y0,
                method=method,
                t_eval=t,
                rtol=rtol,
                atol=atol,
                events=escaped if math.isfinite(bound) else None,
            )
        except _Abort as err:
            if str(err) == "time limit":
                return None
            continue
        except Exception:  # noqa: BLE001 - overflow, singular Jacobian, ...: try the next
            continue
        if sol.status == 0 and sol.y.shape[1] == len(t) and np.all(np.isfinite(sol.y)):
            return sol.y.T
        if sol.status == 1:  # the blow-up event fired: no second chance
            return None
    return None


def r2(pred: np.ndarray | None, truth: np.ndarray) -> float:
    """Variance-weighted R², 1 − ΣSSE/ΣSST over states; −inf when there is no prediction."""
    if pred is None or pred.shape != truth.shape or not np.all(np.isfinite(pred)):
        return -math.inf
    sse = float(np.sum((pred - truth) ** 2))
    sst = float(np.sum((truth - truth.mean(axis=0)) ** 2))
    if not math.isfinite(sse):
        return -math.inf
    if sst == 0.0:
        return 1.0 if sse == 0.0 else -math.inf
    return 1.0 - sse / sst


def solved(score: float) -> bool:
    return bool(math.isfinite(score) and score >= SOLVED)


# -- term sets ---------------------------------------------------------------------------------
def _strip(term: sp.Expr) -> sp.Expr:
    """A product without its numeric coefficient (a bare number gives 1)."""
    return term.as_coeff_Mul()[1]


def _sum_shape(e: sp.Expr) -> sp.Expr:
    """A sum whose every term gets the placeholder as its coefficient: 2*x0 + 0.8 -> c*x0 + c."""
    return sp.Add(*{_C * _shape(_strip(a)) for a in sp.Add.make_args(e)})


def _shape(e: sp.Expr) -> sp.Expr:
    if e.is_Number:
        return _C
    if e.is_Symbol:
        return e
    if e.is_Add:
        return _sum_shape(e)
    if e.is_Mul:
        return sp.Mul(*[_shape(a) for a in e.args])
    if e.is_Pow:
        base, ex = e.args
        if ex.is_Rational:  # integer and rational exponents are structure: x0**2, x0**(1/2)
            new_ex = ex
        elif ex.is_Number:  # a fitted (float) exponent is a number like any other
            new_ex = _C
        else:
            new_ex = _sum_shape(ex)
        return sp.Pow(_sum_shape(base) if base.is_Add else _shape(base), new_ex)
    if e.args:  # a function: every argument is a sum with placeholder coefficients
        return e.func(*[_sum_shape(a) for a in e.args])
    return e


def _expand(expr: sp.Expr) -> sp.Expr:
    try:
        return sp.expand(expr, force=True)
    except Exception:  # noqa: BLE001
        return sp.expand(expr)


def term_shapes(expr: sp.Expr) -> frozenset[sp.Expr]:
    """The set of additive terms of `expr`, numbers stripped.

    The rule: expand the expression (`sympy.expand(..., force=True)`, which also splits
    log(a*x) into log(a) + log(x)); split it into additive terms; drop each term's numeric
    coefficient; drop pure-number terms to the constant term `1`; then inside each term replace
    every number by one placeholder `c`, giving every additive piece of a nested sum or of a
    function argument the coefficient `c` (so exp(-x0), exp(-0.51*x0) and exp(0.5*x0) all read
    exp(c*x0), and x0/(x0 + 0.8), x0/(1.2*x0 + 1) both read x0/(c*x0 + c)). Integer and
    rational exponents are kept (x0**2 is not x0**3); float exponents become `c`. Zero is the
    empty set. Two discovered terms of one shape (0.5*exp(-x0) + 0.1*exp(-2*x0)) count once.
    """
    expr = _expand(sp.sympify(expr))
    if expr == 0:
        return frozenset()
    shapes = set()
    for term in sp.Add.make_args(expr):
        stripped = _strip(term)
        shapes.add(sp.Integer(1) if stripped == 1 else _shape(stripped))
    return frozenset(shapes)


def truth_term_shapes(terms: Sequence[str], states: Sequence[str]) -> frozenset[sp.Expr]:
    """The shapes of a truth.json `terms` list (each entry parsed and shaped the same way)."""
    out: set[sp.Expr] = set()
    for text in terms:
        out |= term_shapes(parse(text, states))
    return frozenset(out)


def exact_terms(
    discovered: Mapping[str, sp.Expr], truth_terms: Mapping[str, Sequence[str]], states
) -> bool:
    """True when every state's term set equals the truth's."""
    return all(
        term_shapes(discovered[s]) == truth_term_shapes(truth_terms.get(s, []), states)
        for s in states
    )


def fmt_shapes(shapes: frozenset[sp.Expr]) -> list[str]:
    return sorted(str(s).replace(str(_C), "c") for s in shapes)
