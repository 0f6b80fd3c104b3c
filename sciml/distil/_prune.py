"""Pruning: discovered terms removed one at a time while the refit's BIC improves.

Backward elimination by significance, bounded: every trial is a full refit through the ODE
(seconds each on a 3-state model), so a term whose removal raised the BIC is not tried again,
and pruning stops after `PATIENCE` rejected removals in a row. Retrying every rejected term
after each removal made pruning quadratic in the number of terms (over 30 minutes on one
3-state system of the suite).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._refit import Refit, Refitter
from ._terms import TermModel

PATIENCE = 3  # rejected removals in a row before pruning stops


def prune_terms(
    tm: TermModel,
    refitter: Refitter,
    fit: Refit,
    mask: Sequence[bool],
    *,
    forced: frozenset[int] = frozenset(),
) -> tuple[Refit, list[bool], list[dict]]:
    """Remove discovered terms one at a time, least significant first, while the BIC improves;
    terms whose index is in `forced` (a reviewer's choice) are never removed. A term whose
    removal is rejected is kept for good; `PATIENCE` rejections in a row end the pruning.

    Returns the last refit, the mask of the terms kept and one record per removed term
    (state, term, its coefficient before removal, BIC before and after).
    """
    mask = list(mask)
    pruned: list[dict] = []
    rejected: set[int] = set()
    in_a_row = 0
    while in_a_row < PATIENCE:
        # Try the least significant discovered term first (smallest |coefficient / stderr|).
        coef, stderr = tm.coefficients(fit.params), tm.coefficients(fit.stderr)
        options = [
            (abs(coef[i]) / max(stderr[i], 1e-300), i)
            for i, term in enumerate(tm.terms)
            if mask[i] and term.origin == "discovered" and i not in rejected | forced
        ]
        if not options:
            break
        _, i = min(options)
        trial = list(mask)
        trial[i] = False
        f = refitter.fit(trial, start=fit.params, y0=fit.y0)
        if not f.ok or f.bic >= fit.bic:
            rejected.add(i)  # this term is needed; try the next least significant one
            in_a_row += 1
            continue
        pruned.append(
            {
                "state": tm.terms[i].state,
                "term": str(tm.terms[i].form),
                "coefficient": float(coef[i]),
                "bic_before": fit.bic,
                "bic_after": f.bic,
            }
        )
        mask[i] = False
        fit = f
        in_a_row = 0
    return fit, mask, pruned
