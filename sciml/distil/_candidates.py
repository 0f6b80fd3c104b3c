"""Candidate search: which of the engines' formulas go back into the ODE, and their refits.

The engines' table is scored once (`candidate_pool`: integral-form scores, `IntegralView`,
the candidates worth a refit per state); then each search is a function from the pool and the
best `Candidate` so far to the candidates it tried and the new best:

- `polynomial_search`: polynomial candidates are masks over one model whose terms are the union
  of their monomials (one compilation for all); the states are swept until nothing improves;
- `formula_search`: the leading non-polynomial formulas, one model each;
- `fallback_search`: where nothing could be refit, the simplest formulas, then the theory alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence

import pandas as pd
import sympy as sp

from .._data import TrajectorySet
from .._model import MechanisticModel
from ._integral import IntegralScore, IntegralView
from ._refit import Refit, Refitter, undetermined_terms, without_least_determined
from ._terms import Term, TermModel, build_term_model


# -- the pool of candidates ---------------------------------------------------------------------
def _in_model_symbols(expr: sp.Expr, model: MechanisticModel) -> sp.Expr:
    table = model.symbol_table()
    return sp.expand(expr.xreplace({s: table[s.name] for s in expr.free_symbols}))


def _polynomial_coefficients(expr: sp.Expr, symbols) -> dict[tuple[int, ...], float] | None:
    """Monomial exponents -> coefficient, or None when `expr` is not a polynomial."""
    if not expr.is_polynomial(*symbols):
        return None
    poly = sp.Poly(expr, *symbols)
    return {m: float(c) for m, c in zip(poly.monoms(), poly.coeffs())}


def _front_choices(
    table: pd.DataFrame, state: str, max_complexity: int, is_polynomial
) -> list[int]:
    """What the network's own candidates argue for, whatever the smoothed data say (with few or
    noisy points the integral-form scores can mislead): on one state's combined Pareto front of
    the network's candidates, the polynomial with the highest PySR score (the steepest drop in
    loss per unit of complexity), and PySR's "best" choice where it is a polynomial."""
    from ..symbolic import pareto_front, select_model

    sub = table[(table["state"] == state) & (table["complexity"] <= max_complexity)]
    if "samples" in sub:
        sub = sub[sub["samples"] == "ude"]
    if sub.empty:
        return []
    front = pareto_front(sub.reset_index(drop=False)).set_index("index")
    poly = [int(r) for r in front.index if is_polynomial(int(r))]
    out = []
    if poly:
        out.append(max(poly, key=lambda r: float(front.loc[r, "score"])))
    best = int(select_model(front, "best")) if len(front) else None
    if best is not None and is_polynomial(best) and best not in out:
        out.append(best)
    return out


KNEE_RATIO = 2.0  # integral-form term sets leaving more than this x the least residual: underfit
KNEE_SETS = 3  # how many of the smallest sets past that point join the refits


def _knee_rows(table: pd.DataFrame, state: str, polys) -> list[int]:
    """Selection's own integral-form candidates (samples `integral`, one best term set per
    size) that go to the refits whatever their BIC: the `KNEE_SETS` smallest whose residual is
    within `KNEE_RATIO` of the least.

    The integral-form BIC alone favours large sets: the smoothing's small systematic errors
    accumulate along each piece, and with hundreds of samples a term that absorbs 2% of them
    pays for itself. The residual falls steeply up to the true size and then flattens (on the
    development systems with 5% noise, the true sets left 1.0-1.4x the residual of the
    six-term sets, the sets one term smaller 2-130x), so the smallest sets near the flat
    part are the ones the refit through the ODE should judge."""
    if "samples" not in table:
        return []
    sub = table[(table["state"] == state) & (table["samples"] == "integral")]
    sub = sub[[polys[int(r)] is not None for r in sub.index]]
    if sub.empty:
        return []
    least = float(sub["loss"].min())
    near = [int(r) for r in sub.index if float(sub.loc[r, "loss"]) <= KNEE_RATIO * least]
    return sorted(near, key=lambda r: len(polys[r]))[:KNEE_SETS]


UNMEASURED_SIMPLEST = 3  # a never-measured state's simplest term sets that join the refits


def _simplest_rows(table: pd.DataFrame, state: str, polys, max_complexity: int) -> list[int]:
    """A state's `UNMEASURED_SIMPLEST` simplest polynomial term sets (one row per set of
    monomials), for states some trajectory never measures. Their integral-form scores rest on
    the values the trained UDE estimates for them, which follow the network's own field, so
    they cannot rank the candidates; the refit through the ODE against what is measured can,
    and it should see the simple explanations too, not only the wide polynomials that fit the
    estimates best."""
    sub = table[(table["state"] == state) & (table["complexity"] <= max_complexity)]
    rows, seen = [], set()
    for r in sub.sort_values("complexity", kind="stable").index:
        terms = polys[int(r)]
        if terms is None or frozenset(terms) in seen:
            continue
        seen.add(frozenset(terms))
        rows.append(int(r))
    return rows[:UNMEASURED_SIMPLEST]


def _ranked_candidates(
    table: pd.DataFrame,
    state: str,
    scores: dict[int, IntegralScore | None],
    max_complexity: int,
) -> list[int]:
    """One state's candidates worth a refit through the ODE, best integral-form BIC first; each
    formula text once (engines often agree). Candidates that cannot be evaluated go last."""
    sub = table[(table["state"] == state) & (table["complexity"] <= max_complexity)]
    if sub.empty:  # nothing simple enough: fall back on the simplest candidates there are
        sub = table[table["state"] == state].nsmallest(3, "complexity")

    def key(r: int) -> tuple[float, int]:
        score = scores.get(r)
        return (score.bic if score is not None else math.inf, int(table.loc[r, "complexity"]))

    rows, seen = [], set()
    for r in sorted((int(r) for r in sub.index), key=key):
        text = str(table.loc[r, "equation"])
        if text not in seen:
            seen.add(text)
            rows.append(r)
    return rows


@dataclasses.dataclass(frozen=True)
class CandidatePool:
    """The engines' candidates prepared for the search (rows are `table`'s index).

    - `exprs`: each row's formula over the model's symbols; `polynomials`: its monomial
      exponents -> coefficient, None when it is not a polynomial;
    - `scores`: its integral-form score (None: it cannot be evaluated on the smoothed data);
    - `order`: per state, the rows worth a refit, best integral-form BIC first;
    - `polynomial_rows`, `formula_rows`: per state, the polynomial and other rows to refit.
    """

    table: pd.DataFrame
    states: tuple[str, ...]
    exprs: Mapping[int, sp.Expr]
    polynomials: Mapping[int, Mapping[tuple[int, ...], float] | None]
    scores: Mapping[int, IntegralScore | None]
    order: Mapping[str, list[int]]
    polynomial_rows: Mapping[str, list[int]]
    formula_rows: Mapping[str, list[int]]

    def first_choice(self) -> dict[str, int]:
        """One row per state to start from: its best polynomial, else its best formula."""
        return {s: (self.polynomial_rows[s] or self.formula_rows[s])[0] for s in self.states}

    def is_polynomial(self, choice: Mapping[str, int]) -> bool:
        return all(self.polynomials[r] is not None for r in choice.values())

    def simplest(self, fallback: Mapping[str, int]) -> dict[str, int]:
        """Each state's least complex ranked row (`fallback`'s row where none is ranked)."""
        complexity = self.table["complexity"]
        return {
            s: min(self.order[s] or [fallback[s]], key=lambda r: int(complexity.loc[r]))
            for s in self.states
        }

    def chosen(self, choice: Mapping[str, int]) -> dict[str, dict]:
        """What `Selection.chosen` records of each state's row."""
        t = self.table
        return {
            s: {
                "engine": str(t.loc[r, "engine"]),
                "equation": str(t.loc[r, "equation"]),
                "complexity": int(t.loc[r, "complexity"]),
                "loss": float(t.loc[r, "loss"]),
                "row": int(r),
            }
            for s, r in choice.items()
        }


def candidate_pool(
    table: pd.DataFrame,
    model: MechanisticModel,
    view: IntegralView,
    *,
    max_complexity: int = 80,
    max_polynomial: int = 4,
    max_nonpolynomial: int = 1,
    unmeasured: Collection[str] = (),
) -> CandidatePool:
    """Score every candidate in the integral form (`IntegralView.score`) and choose, per state,
    the best `max_polynomial` polynomial rows (with the network's own choices on its Pareto
    front, and for the `unmeasured` states, those some trajectory never measures, their
    simplest term sets: `_simplest_rows`) and the best `max_nonpolynomial` other rows that
    score better than every polynomial one."""
    states = tuple(s for s in model.residual_states if (table["state"] == s).any())
    symbols = model.state_symbols
    exprs = {int(r): _in_model_symbols(table.loc[r, "sympy_format"], model) for r in table.index}
    polys = {r: _polynomial_coefficients(e, symbols) for r, e in exprs.items()}
    scores: dict[int, IntegralScore | None] = {}
    for r, e in exprs.items():
        scores[r] = view.score(e, model.states.index(str(table.loc[r, "state"])))
    order = {s: _ranked_candidates(table, s, scores, max_complexity) for s in states}

    # The polynomial candidates worth a refit: the best few by their integral-form score, and
    # the network's own choice on its Pareto front.
    poly_rows = {}
    for s in states:
        rows = [r for r in order[s] if polys[r] is not None][:max_polynomial]
        for r in [
            *_knee_rows(table, s, polys),
            *_front_choices(table, s, max_complexity, lambda r: polys[r] is not None),
            *(_simplest_rows(table, s, polys, max_complexity) if s in unmeasured else ()),
        ]:
            if r not in rows:
                rows.append(r)
        poly_rows[s] = rows

    def beats_polynomials(r: int, s: str) -> bool:
        best_poly = min(
            (scores[p].bic for p in poly_rows[s] if scores[p] is not None), default=None
        )
        return best_poly is None or (scores[r] is not None and scores[r].bic < best_poly)

    other_rows = {
        s: [r for r in order[s] if polys[r] is None and beats_polynomials(r, s)][:max_nonpolynomial]
        for s in states
    }
    for s in states:  # every state needs a first candidate
        if not poly_rows[s] and not other_rows[s]:
            other_rows[s] = [r for r in order[s] if polys[r] is None][:1]
    return CandidatePool(table, states, exprs, polys, scores, order, poly_rows, other_rows)


# -- candidates and their search ----------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Candidate:
    """One model tried: a row of the table per state, its term model, the terms switched on
    and its refit to the data through the ODE."""

    choice: Mapping[str, int]  # state -> row of the candidates' table
    kind: str  # "polynomial", "formula" or "fallback"
    term_model: TermModel
    refitter: Refitter
    mask: tuple[bool, ...]
    refit: Refit

    @property
    def determined(self) -> bool:
        """Whether the data determine every discovered coefficient it keeps; always, unless
        some state is unmeasured (`undetermined_terms`)."""
        return not self.refitter.unmeasured or not undetermined_terms(
            self.term_model, self.refit, self.mask
        )

    def determined_part(self) -> Candidate:
        """Where states are unmeasured: this candidate with the discovered terms the data do
        not determine removed, the least determined first, each removal refit (one removal
        can make the others determined, when they traded off against it), until every one
        left is determined or a refit fails. Itself otherwise.

        A model can fit the measured values along whole families of coefficients traded
        against the unmeasured states' scale, and the BIC, which counts every coefficient as
        one determined number, rewards such wide models: on weekly SEIR case counts, a 9-term
        polynomial for the unmeasured infectious state, none of its coefficients determined,
        reached a quarter of the right model's squared error. So candidates are compared by
        what the data determine of them. Removing the terms from each candidate, rather than
        ranking undetermined candidates last, keeps a wide candidate that holds the right
        terms among spurious ones in the running (with only the prey measured, Lotka-Volterra's
        predator gain +c*x*y came in such a candidate). With every state measured, a
        coefficient that is not determined costs more BIC than it gains, and pruning drops it."""
        c = self
        while c.refitter.unmeasured and c.refit.ok:
            step = without_least_determined(c.refitter, c.term_model, c.refit, c.mask)
            if step is None:
                break
            i, fit = step
            mask = list(c.mask)
            mask[i] = False
            c = dataclasses.replace(c, mask=tuple(mask), refit=fit)
        return c

    def beats(self, other: Candidate | None, margin: float = 0.0) -> bool:
        """Refit, and its BIC lower than `other`'s by more than `margin` (or `other` failed);
        where states are unmeasured, one whose discovered coefficients the data all determine
        beats one with a coefficient they do not (`determined_part` says why), whatever the
        BIC."""
        if not self.refit.ok:
            return False
        if other is None or not other.refit.ok:
            return True
        if self.determined != other.determined:
            return self.determined
        return self.refit.bic < other.refit.bic - margin

    def record(self, table: pd.DataFrame) -> dict:
        """What `Selection.tried` records of it."""
        return {
            "choice": {s: str(table.loc[r, "equation"]) for s, r in self.choice.items()},
            "engines": {s: str(table.loc[r, "engine"]) for s, r in self.choice.items()},
            "kind": self.kind,
            "bic": self.refit.bic if self.refit.ok else None,
            "sse": self.refit.sse,
        }


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What every search needs: the declared model and its fit, the data and the pool."""

    model: MechanisticModel
    mech_params: Sequence[float]
    data: TrajectorySet
    pool: CandidatePool
    fit_initial_state: bool = True

    def refitter(self, tm: TermModel) -> Refitter:
        return Refitter(tm, self.data, fit_initial_state=self.fit_initial_state)

    def formula_model(self, choice: Mapping[str, int]) -> TermModel:
        """The declared model plus each state's chosen formula."""
        exprs = self.pool.exprs
        return build_term_model(
            self.model, self.mech_params, {s: exprs[r] for s, r in choice.items()}
        )

    def current(self, best: Candidate | None) -> dict[str, int]:
        """The choice the next search varies: the best so far, else the pool's first."""
        return dict(best.choice) if best is not None else self.pool.first_choice()


def _exps(term: Term, symbols) -> tuple[int, ...] | None:
    """The exponents of a term that is one monomial; None otherwise."""
    if not term.form.is_polynomial(*symbols):
        return None
    monoms = sp.Poly(term.form, *symbols).monoms()
    return monoms[0] if len(monoms) == 1 else None


def _theory_coefficient(model, mech_params, state, expr, symbols) -> float:
    """Coefficient, in the declared model with fitted numbers, of the monomial `expr`."""
    eq = model.equations[model.states.index(state)]
    eq = sp.expand(eq.xreplace(dict(zip(model.parameter_symbols, map(sp.Float, mech_params)))))
    return float(sp.Poly(eq, *symbols).coeff_monomial(expr)) if eq.is_polynomial(*symbols) else 0.0


@dataclasses.dataclass(frozen=True)
class PolynomialLibrary:
    """One term model with every monomial the polynomial candidates use: each candidate is a
    mask over it with its own starting coefficients (the theory's plus the formula's)."""

    term_model: TermModel
    refitter: Refitter
    exponents: tuple[tuple[int, ...] | None, ...]  # per term
    theory: tuple[float, ...]  # per term: the declared model's coefficient (0 if none)

    @classmethod
    def build(cls, space: SearchSpace) -> PolynomialLibrary:
        pool, model = space.pool, space.model
        symbols = model.state_symbols
        library: dict[str, set[tuple[int, ...]]] = {s: set() for s in pool.states}
        for s in pool.states:
            for r in pool.polynomial_rows[s]:
                library[s].update(pool.polynomials[r])

        def monomial(exps) -> sp.Expr:
            return sp.Mul(*[v**e for v, e in zip(symbols, exps)])

        formulas = {s: sp.Add(*[monomial(m) for m in sorted(library[s])]) for s in pool.states}
        tm = build_term_model(model, space.mech_params, formulas)
        exponents = tuple(_exps(t, symbols) for t in tm.terms)
        theory = tuple(
            float(_theory_coefficient(model, space.mech_params, t.state, t.form, symbols))
            if t.origin == "theory"
            else 0.0
            for t in tm.terms
        )
        return cls(tm, space.refitter(tm), exponents, theory)

    def candidate(self, pool: CandidatePool, choice: Mapping[str, int]) -> Candidate:
        """The refit of the polynomial candidates `choice` (state -> row)."""
        tm = self.term_model
        mask, start = [], []
        for t, exps, base in zip(tm.terms, self.exponents, self.theory):
            coefs = pool.polynomials[choice[t.state]] if t.state in choice else {}
            mask.append(t.origin == "theory" or (exps is not None and exps in coefs))
            start.append(base + coefs.get(exps, 0.0))
        start = tm.with_coefficients(tm.model.guesses, start)
        fit = self.refitter.fit(mask, start=start)
        candidate = Candidate(dict(choice), "polynomial", tm, self.refitter, tuple(mask), fit)
        return candidate.determined_part()


def polynomial_search(
    space: SearchSpace, best: Candidate | None, *, sweeps: int = 3
) -> tuple[Candidate | None, list[Candidate]]:
    """Where every state's first choice is a polynomial: each state's polynomial rows tried in
    turn (coordinate-wise), the states swept until nothing improves (at most `sweeps` times)."""
    pool, current = space.pool, space.current(best)
    if not pool.is_polynomial(current):
        return best, []
    library = PolynomialLibrary.build(space)
    best = library.candidate(pool, current)
    tried = [best]
    seen = {tuple(sorted(current.items()))}
    for _ in range(sweeps):
        changed = False
        for s in pool.states:
            for r in pool.polynomial_rows[s]:
                choice = {**space.current(best), s: r}
                key = tuple(sorted(choice.items()))
                if key in seen:
                    continue
                seen.add(key)
                tried.append(library.candidate(pool, choice))
                if tried[-1].beats(best):
                    best, changed = tried[-1], True
        if not changed:
            break
    return best, tried


def formula_search(
    space: SearchSpace, best: Candidate | None, *, margin: float = 2.0
) -> tuple[Candidate | None, list[Candidate]]:
    """Each state's leading non-polynomial formulas, in a model (and a compilation) each. They
    must beat the best so far by a BIC lower by more than `margin`, since their inner constants
    make them more flexible than their parameter count says."""
    tried = []
    for s in space.pool.states:
        for r in space.pool.formula_rows[s]:
            choice = {**space.current(best), s: r}
            tm = space.formula_model(choice)
            refitter = space.refitter(tm)
            mask = (True,) * len(tm.terms)
            candidate = Candidate(choice, "formula", tm, refitter, mask, refitter.fit(mask))
            tried.append(candidate.determined_part())
            if tried[-1].beats(best, margin):
                best = tried[-1]
    return best, tried


def fallback_search(
    space: SearchSpace, best: Candidate | None
) -> tuple[Candidate | None, list[Candidate]]:
    """Only where no candidate could be refit (every one blows up through the ODE): the
    simplest formula of each state, then the theory alone (every discovered term off), which
    is the mechanistic fit and integrates."""
    if best is not None and best.refit.ok:
        return best, []
    choice = space.pool.simplest(space.current(best))
    tm = space.formula_model(choice)
    refitter = space.refitter(tm)
    tried = []
    for mask in ((True,) * len(tm.terms), tuple(t.origin == "theory" for t in tm.terms)):
        tried.append(Candidate(choice, "fallback", tm, refitter, mask, refitter.fit(mask)))
        if tried[-1].refit.ok:
            return tried[-1], tried
    return best, tried


SEARCHES = (polynomial_search, formula_search, fallback_search)
