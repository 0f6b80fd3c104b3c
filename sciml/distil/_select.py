"""Selection: one formula per residual state chosen by refits through the ODE, then pruned."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import pandas as pd
import sympy as sp

from .._data import TrajectorySet
from .._errors import NumericalError
from .._model import MechanisticModel
from .._smooth import Smoothed, smooth
from ._candidates import SEARCHES, SearchSpace, candidate_pool
from ._integral import INTEGRAL_PERIODS, IntegralView, integral_candidates
from ._prune import prune_terms
from ._refit import Refit
from ._terms import TermModel


@dataclasses.dataclass(frozen=True)
class FittedTerm:
    """One term of a selection's model with its refit coefficient (0 when switched off)."""

    state: str
    form: sp.Expr  # coefficient 1, inner constants inlined (6 significant digits)
    coefficient: float
    stderr: float | None  # None when switched off
    origin: str  # "theory" or "discovered"
    kept: bool

    def to_dict(self) -> dict:
        """As `discovered.json`'s `terms` write it."""
        return {
            "state": self.state,
            "term": str(self.form),
            "coefficient": self.coefficient,
            "stderr": self.stderr,
            "origin": self.origin,
            "kept": self.kept,
        }


@dataclasses.dataclass(frozen=True)
class Selection:
    term_model: TermModel
    refit: Refit
    mask: tuple[bool, ...]
    chosen: dict[str, dict]  # state -> {engine, equation, complexity, loss, row}
    pruned: list[dict]
    tried: list[dict]
    table: pd.DataFrame | None = None  # the candidates chosen from (`chosen`'s rows index it)

    def equations(self) -> dict[str, str]:
        return self.term_model.inlined(self.refit.params, self.mask)

    def final_model(self) -> MechanisticModel:
        """The selected model with the refit numbers inlined (no free parameters)."""
        return self.term_model.final_model(self.refit.params, self.mask)

    def fitted_terms(self) -> tuple[FittedTerm, ...]:
        """Every term of the model (kept or not) with its refit coefficient and standard error;
        the constants inside terms (e.g. k in `tanh(k*x)`) inlined."""
        tm, refit = self.term_model, self.refit
        forms = tm.forms(refit.params, digits=6)
        coef, stderr = tm.coefficients(refit.params), tm.coefficients(refit.stderr)
        return tuple(
            FittedTerm(
                state=term.state,
                form=form,
                coefficient=float(c) if keep else 0.0,
                stderr=float(e) if keep else None,
                origin=term.origin,
                kept=bool(keep),
            )
            for term, form, c, e, keep in zip(tm.terms, forms, coef, stderr, self.mask)
        )


def select_and_refit(
    model: MechanisticModel,
    mech_params: Sequence[float],
    table: pd.DataFrame,
    data: TrajectorySet,
    *,
    fit_initial_state: bool = True,
    max_complexity: int = 80,
    max_polynomial: int = 4,
    max_nonpolynomial: int = 1,
    smoothed: Smoothed | None = None,
    library_degree: int | None = 3,
) -> Selection:
    """Choose one formula per residual state, refit every constant, prune needless terms.

    `table` holds every engine's candidates with a `state` column; with `library_degree`, the
    best term sets of a polynomial library of that degree found from the data alone join them
    (`integral_candidates`; rows with samples `integral`). Candidates are compared by the BIC
    of their refit *through the ODE against the data*:

    - polynomial candidates (SINDy's whole sparsity path, and any other engine's formula that
      expands to a polynomial) share one model whose terms are the union of their monomials:
      each candidate is a mask over it, so all of them cost one compilation;
    - the best few non-polynomial candidates per state get a model of their own.

    Before any ODE solve, every candidate is scored in the integral form: its terms'
    coefficients fitted by least squares so that their integrals along the smoothed states
    match the measured values, piece by piece (`IntegralView`). Only the best `max_polynomial`
    polynomial and `max_nonpolynomial` other candidates per state, with the smallest of
    selection's own sets near their least residual, go on to refits through the ODE, best
    first, and a formula only where it scores better than every polynomial. States
    are improved one at a time (coordinate-wise). Last, discovered terms are removed one at a
    time, least significant first, while the BIC improves: a term stays only if dropping it
    worsens the fit by more than the noise explains.
    """
    smoothed = smoothed if smoothed is not None else smooth(data)
    horizon = INTEGRAL_PERIODS * 2 * math.pi * smoothed.time_scale()
    view = IntegralView.build(model, mech_params, data, smoothed, horizon)
    if library_degree is not None:
        states = [s for s in model.residual_states if (table["state"] == s).any()]
        own = integral_candidates(view, states, degree=library_degree)
        table = pd.concat([table, own], ignore_index=True) if len(own) else table
    never = data.unmeasured().any(axis=0) if data.partial else [False] * len(model.states)
    pool = candidate_pool(
        table,
        model,
        view,
        max_complexity=max_complexity,
        max_polynomial=max_polynomial,
        max_nonpolynomial=max_nonpolynomial,
        unmeasured=[s for s, u in zip(model.states, never) if u],
    )
    space = SearchSpace(model, mech_params, data, pool, fit_initial_state)
    best, tried = None, []
    for search in SEARCHES:
        best, found = search(space, best)
        tried.extend(found)
    if best is None or not best.refit.ok:
        raise NumericalError("no candidate model could be refit to the data", stage="selection")
    refit, mask, pruned = prune_terms(best.term_model, best.refitter, best.refit, best.mask)
    return Selection(
        best.term_model,
        refit,
        tuple(mask),
        pool.chosen(best.choice),
        pruned,
        [c.record(table) for c in tried],
        table,
    )
