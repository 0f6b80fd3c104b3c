"""A model written as a sum of terms per state, every number in it a parameter of its own.

`build_term_model` splits the declared equations (fitted numbers inlined) and the candidate
formulas into additive terms; each term's outer coefficient becomes a parameter, and so does
every constant inside a term (e.g. `k` in `tanh(k*x)`), so a refit moves every number. The
parameters' names are internal: callers read coefficients, forms and constants through the
`TermModel`'s methods, never by parsing names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import sympy as sp

from .._model import RESERVED, MechanisticModel


@dataclasses.dataclass(frozen=True)
class Term:
    """One additive term of a state's equation: `coefficient * form`."""

    state: str
    form: sp.Expr  # the term with coefficient 1 (its inner constants as parameter symbols)
    origin: str  # "theory" (matches a term of the declared model) or "discovered"
    parameter: str  # name of its coefficient in the term model (internal; 0 removes the term)


@dataclasses.dataclass(frozen=True)
class TermModel:
    """A model written as a sum of terms per state, every constant a parameter.

    A parameter vector `params` is in the order of `model.parameters`; a term mask has one
    entry per term (False: the term is switched off, its coefficient 0).
    """

    model: MechanisticModel
    terms: tuple[Term, ...]
    # per parameter: the declared model's value of a term that only known (fixed) parameters
    # make, NaN elsewhere; `model.fixed` marks them (`Refitter` keeps them with unmeasured states)
    known_values: tuple[float, ...] = ()
    # (follower, leader, ratio): parameter positions of theory terms whose declared
    # coefficients are multiples of one expression of free parameters (`-beta` in dS/dt and
    # `beta` in dE/dt): tied, the follower is `ratio` times the leader (`Refitter` ties them
    # where states are unmeasured)
    ties: tuple[tuple[int, int, float], ...] = ()

    def coefficient_index(self) -> np.ndarray:
        """Position in a parameter vector of each term's coefficient."""
        return np.asarray([self.model.parameters.index(t.parameter) for t in self.terms], int)

    def coefficients(self, params) -> np.ndarray:
        """Each term's coefficient in `params` (one per term)."""
        return np.asarray(params, dtype=float)[self.coefficient_index()]

    def with_coefficients(self, params, values: Sequence[float]) -> np.ndarray:
        """A copy of `params` with the terms' coefficients set to `values` (one per term)."""
        out = np.array(params, dtype=float)
        out[self.coefficient_index()] = np.asarray(values, dtype=float)
        return out

    def coefficient_bounds(self) -> tuple[tuple[float, float], ...]:
        """Each term's coefficient's `(min, max)` in the refit (`-inf`/`inf` where free)."""
        bounds = self.model.parameter_bounds
        return tuple(tuple(bounds[i]) for i in self.coefficient_index())

    def param_mask(self, term_mask: Sequence[bool]) -> np.ndarray:
        """1 for every parameter, 0 for the coefficients of the terms switched off."""
        m = np.ones(len(self.model.parameters))
        m[self.coefficient_index()] = np.asarray(term_mask, dtype=float)
        return m

    def inner_constants(self, params, digits: int | None = None) -> dict[sp.Symbol, sp.Float]:
        """The constants inside terms (e.g. k in `tanh(k*x)`) at `params`: every parameter
        that is not a term's own coefficient."""
        coefficients = {t.parameter for t in self.terms}
        return {
            sp.Symbol(n, real=True): sp.Float(float(v), *([digits] if digits else []))
            for n, v in zip(self.model.parameters, params)
            if n not in coefficients
        }

    def forms(self, params, digits: int | None = None) -> tuple[sp.Expr, ...]:
        """Each term with coefficient 1 and its inner constants at `params` (`digits`
        significant digits; all when None)."""
        inner = self.inner_constants(params, digits)
        return tuple(t.form.xreplace(inner) for t in self.terms)

    def inlined(self, params, mask) -> dict[str, str]:
        """Each state's equation with every number at `params` (6 digits), terms off by `mask`
        dropped, as text."""
        subs = {
            sp.Symbol(n, real=True): sp.Float(float(v) * float(m), 6)
            for n, v, m in zip(self.model.parameters, params, self.param_mask(mask))
        }
        return {
            s: str(sp.expand(eq.xreplace(subs)))
            for s, eq in zip(self.model.states, self.model.equations)
        }

    def final_model(self, params, mask) -> MechanisticModel:
        """The model with every number at `params` inlined (no free parameters), terms off by
        `mask` dropped."""
        subs = {
            sp.Symbol(n, real=True): sp.Float(float(v) * float(m))
            for n, v, m in zip(self.model.parameters, params, self.param_mask(mask))
        }
        eqs = [sp.expand(eq.xreplace(subs)) for eq in self.model.equations]
        return self.model.with_equations(eqs, (), ())


def _monomial(term: sp.Expr) -> sp.Expr:
    coeff, rest = term.as_coeff_Mul()
    return rest


def _declared_coefficients(model: MechanisticModel, eq: sp.Expr) -> dict[sp.Expr, sp.Expr]:
    """The declared equation `eq` as form (a term with coefficient 1) -> coefficient, an
    expression in the parameters (`a*x - 2*b*x*y + (a - c)*y`: x -> a, x*y -> -2*b,
    y -> a - c); terms with a parameter inside (`x/(1 + b*x)`) are left out."""
    params = set(model.parameter_symbols)
    out: dict[sp.Expr, sp.Expr] = {}
    for term in sp.Add.make_args(sp.expand(eq)):
        if term == 0:
            continue
        factor, form = term.as_independent(*model.state_symbols, model.time_symbol, as_Add=False)
        if not form.free_symbols & params:
            out[form] = out.get(form, sp.Integer(0)) + factor
    return out


def _coefficient_range(model: MechanisticModel, c: sp.Expr) -> tuple[float, float] | None:
    """The range of a coefficient linear in the parameters (`a`, `-2*b`, `a - c`), the sum of
    their declared ranges; None for other coefficients and ranges unbounded on both sides."""
    declared = dict(zip(model.parameter_symbols, model.parameter_bounds))
    used = [p for p in model.parameter_symbols if p in c.free_symbols]
    if not used or not c.is_polynomial(*used) or sp.Poly(c, *used).total_degree() > 1:
        return None
    poly = sp.Poly(c, *used)
    lo = hi = float(poly.coeff_monomial(1))
    for p in used:
        ends = [float(poly.coeff_monomial(p)) * b for b in declared[p]]
        lo, hi = lo + min(ends), hi + max(ends)
    return (lo, hi) if np.isfinite(lo) or np.isfinite(hi) else None


def build_term_model(
    model: MechanisticModel, mech_params: Sequence[float], formulas: dict[str, sp.Expr]
) -> TermModel:
    """Mechanistic equations (fitted numbers inlined) plus formulas, split into additive terms.

    Each term's numeric coefficient becomes a parameter; constants inside a term (e.g. in
    `x/(1 + 0.5*y)`) become parameters too, so the refit moves every number. No parameter
    takes a state's or a declared parameter's name. A term is "theory" when the declared model
    has a term of the same form; its coefficient keeps the range that the declared parameters'
    bounds give it (`a*x` with `a` in [0, 2]: the coefficient of `x` in [0, 2]; `-b*x*y`: that
    of `x*y` in [-max b, -min b]), also where a formula's term of that form is merged into it.
    """
    subs = dict(zip(model.parameter_symbols, [sp.Float(float(v)) for v in mech_params]))
    table = model.symbol_table()
    taken = set(model.states) | set(model.parameters) | set(RESERVED)

    def fresh(name: str) -> str:
        """`name`, or with underscores appended where a state or parameter has it already."""
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    ones = {p: sp.Integer(1) for p in model.parameter_symbols}
    # free-parameter expression (`beta`) -> (position, factor) of the first term it makes
    leaders: dict[sp.Expr, tuple[int, float]] = {}
    ties: list[tuple[int, int, float]] = []
    names, guesses, bounds, equations, terms = [], [], [], [], []
    known, given = [], {p for p, f in zip(model.parameter_symbols, model.fixed) if f}
    known_values: list[float] = []
    free = (-np.inf, np.inf)
    for state, eq in zip(model.states, model.equations):
        declared = _declared_coefficients(model, eq)
        theory_forms = {
            _monomial(t) for t in sp.Add.make_args(sp.expand(eq.xreplace(ones))) if t != 0
        } | set(declared)  # a form stays the theory's where its coefficient is 0 at ones (a - c)
        parts = [eq.xreplace(subs)]
        if state in formulas:
            parts.append(
                formulas[state].xreplace({s: table[s.name] for s in formulas[state].free_symbols})
            )
        # Terms of the same form are merged, but a form stays even where the theory's and the
        # formula's coefficients cancel (a library term x beside the theory's -x): its
        # coefficient then starts at 0 and the refit moves it.
        merged: dict[sp.Expr, float] = {}
        from_formula: set[sp.Expr] = set()
        for i, part in enumerate(parts):
            for term in sp.Add.make_args(sp.expand(part)):
                if term != 0:
                    coeff, rest = term.as_coeff_Mul()
                    merged[rest] = merged.get(rest, 0.0) + float(coeff)
                    if i:
                        from_formula.add(rest)
        rhs = sp.Integer(0)
        for k, (rest, coeff) in enumerate(merged.items()):
            inner = sorted(rest.atoms(sp.Float), key=str)
            for j, f in enumerate(inner):
                name = fresh(f"k_{state}_{k}_{j}")
                rest = rest.xreplace({f: sp.Symbol(name, real=True)})
                names.append(name)
                guesses.append(float(f))
                bounds.append(free)
                known.append(False)
                known_values.append(np.nan)
            pname = fresh(f"c_{state}_{k}")
            names.append(pname)
            guesses.append(float(coeff))
            psym = sp.Symbol(pname, real=True)
            rhs = rhs + psym * rest
            origin = "theory" if not inner and rest in theory_forms else "discovered"
            theory = origin == "theory" and rest in declared
            bounds.append((theory and _coefficient_range(model, declared[rest])) or free)
            # `fixed`: a theory term whose coefficient only known parameters make (the refit
            # keeps it at the declared value where states are unmeasured, `Refitter`: a
            # formula's term of the same form is then dropped)
            known.append(theory and not declared[rest].free_symbols - given)
            known_values.append(float(declared[rest].xreplace(subs)) if known[-1] else np.nan)
            if theory and not known[-1] and rest not in from_formula:
                factor, shared = declared[rest].as_coeff_Mul()
                if shared in leaders and float(factor) and leaders[shared][1]:
                    ties.append(
                        (len(names) - 1, leaders[shared][0], float(factor / leaders[shared][1]))
                    )
                else:
                    leaders.setdefault(shared, (len(names) - 1, float(factor)))
            terms.append(Term(state, rest, origin, pname))
        equations.append(rhs)
    new = model.with_equations(equations, names, guesses, known, values=mech_params)
    if np.isfinite(bounds).any():
        clipped = tuple(float(np.clip(g, *b)) for g, b in zip(guesses, bounds))
        new = dataclasses.replace(new, guesses=clipped, bounds=tuple(bounds))
    return TermModel(new, tuple(terms), tuple(known_values), tuple(ties))
