"""Distillation: from a trained UDE to equations refit to the data.

1. Dense sampling (`dense_samples`): the trained UDE integrated densely from every trajectory's
   start and from starts spread around the data; the network's output at those states is the
   regression target for the symbolic engines (no finite differences of noisy data needed).
2. The term model (`build_term_model`, `TermModel`): the declared equations (fitted numbers
   inlined) plus candidate formulas, split into additive terms, every number a parameter.
3. Refit (`Refitter`): every constant of a term model fitted to the *data* through the ODE
   solve, by multiple shooting; a declared term's coefficient within the range that its
   parameters' bounds (`{ value, min, max }`) give it.
4. Candidate search and selection (`select_and_refit`): per residual state, the engines'
   candidates and the best term sets of a polynomial library (`integral_candidates`) scored in
   the integral form (`IntegralView`: their integrals along the smoothed states against the
   measured values, no ODE solve), the leading ones refit through the ODE (each a
   `Candidate`), the best by BIC kept.
5. Pruning (`prune_terms`): discovered terms whose removal does not worsen the fit beyond the
   noise level (BIC) are removed, one at a time.
6. Evaluation (`model_field`, `simulate_field`, `simulate_grids`, `rmse`): a fitted model as a
   vector field, simulated from given starts and compared with the data.
"""

from ._candidates import (
    Candidate,
    CandidatePool,
    SearchSpace,
    candidate_pool,
    fallback_search,
    formula_search,
    polynomial_search,
)
from ._evaluate import ModelField, model_field, rmse, simulate_field, simulate_grids
from ._integral import IntegralScore, IntegralView, integral_candidates, polynomial_library
from ._prune import prune_terms
from ._refit import SHOOTING_PERIODS, Refit, Refitter
from ._sampling import DATA_SOURCE, DenseSamples, dense_samples
from ._select import FittedTerm, Selection, select_and_refit
from ._terms import Term, TermModel, build_term_model

__all__ = [
    "DATA_SOURCE",
    "SHOOTING_PERIODS",
    "Candidate",
    "CandidatePool",
    "IntegralScore",
    "IntegralView",
    "DenseSamples",
    "FittedTerm",
    "ModelField",
    "Refit",
    "Refitter",
    "SearchSpace",
    "Selection",
    "Term",
    "TermModel",
    "build_term_model",
    "candidate_pool",
    "integral_candidates",
    "dense_samples",
    "fallback_search",
    "formula_search",
    "model_field",
    "polynomial_library",
    "polynomial_search",
    "prune_terms",
    "rmse",
    "select_and_refit",
    "simulate_field",
    "simulate_grids",
]
