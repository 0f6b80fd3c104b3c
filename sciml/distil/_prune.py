"""Pruning: discovered terms removed one at a time while the refit's BIC improves.

Backward elimination by significance, bounded: every trial is a full refit through the ODE
(seconds each on a 3-state model), so a term whose removal raised the BIC is not tried again
in that pass, and a pass stops after `PATIENCE` rejected removals in a row. Retrying every
rejected term after each removal made pruning quadratic in the number of terms (over 30
minutes on one 3-state system of the suite).

Elimination is greedy: a true term of small coefficient can go first while spurious terms
stand in for it, and they then look needed (a Tyson cell-cycle model of the suite lost its
small `x1` term that way and kept a constant and an `x0**2`). So when a pass stops, the
`RESTORE` removals that gained least are tried back, each once in all; where one lowers the
BIC it is kept and elimination runs again on the model with it.

Where states are unmeasured, a term whose coefficient the data do not determine goes too,
whatever the BIC (`undetermined_terms`; `Candidate.determined_part` says why the BIC
misjudges them there): the least determined first, each removal refit, then elimination by
the BIC again.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._refit import Refit, Refitter, without_least_determined
from ._terms import TermModel

PATIENCE = 3  # rejected removals in a row before an elimination pass stops
RESTORE = 3  # removed terms tried back after each pass (the removals that gained least)


def _record(tm: TermModel, i: int, before: Refit, after: Refit, reason: str) -> dict:
    """What `prune_terms` returns of term `i`'s removal."""
    return {
        "state": tm.terms[i].state,
        "term": str(tm.terms[i].form),
        "coefficient": float(tm.coefficients(before.params)[i]),
        "bic_before": before.bic,
        "bic_after": after.bic,
        "reason": reason,
    }


def _eliminate(
    tm: TermModel, refitter: Refitter, fit: Refit, mask: list[bool], forced: frozenset[int]
) -> tuple[Refit, list[bool], list[tuple[int, dict]]]:
    """One pass of backward elimination: (last refit, mask, (term index, record) removed)."""
    removed: list[tuple[int, dict]] = []
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
        removed.append((i, _record(tm, i, fit, f, "BIC")))
        mask[i] = False
        fit = f
        in_a_row = 0
    return fit, mask, removed


def _drop_undetermined(
    tm: TermModel, refitter: Refitter, fit: Refit, mask: list[bool], forced: frozenset[int]
) -> tuple[Refit, list[bool], list[tuple[int, dict]]]:
    """With unmeasured states: the least determined discovered term removed (not one in
    `forced`) and the model refit; nothing when every coefficient is determined or the refit
    without it fails."""
    if not refitter.unmeasured:
        return fit, mask, []
    step = without_least_determined(refitter, tm, fit, mask, forced)
    if step is None:
        return fit, mask, []
    i, f = step
    stderr = tm.coefficients(fit.stderr)[i]
    record = _record(tm, i, fit, f, f"not determined (standard error {stderr:.3g})")
    mask[i] = False
    return f, mask, [(i, record)]


def prune_terms(
    tm: TermModel,
    refitter: Refitter,
    fit: Refit,
    mask: Sequence[bool],
    *,
    forced: frozenset[int] = frozenset(),
) -> tuple[Refit, list[bool], list[dict]]:
    """Remove discovered terms one at a time, least significant first, while the BIC improves;
    terms whose index is in `forced` (a reviewer's choice) are never removed. After each pass,
    the removals that gained least are tried back (each term once): one that lowers the BIC
    stays, and elimination runs again.

    Where states are unmeasured, then, a discovered term whose coefficient the data do not
    determine is removed (least determined first, never tried back) and elimination runs
    again, until every one left is determined.

    Returns the last refit, the mask of the terms kept and one record per term removed in the
    end (state, term, its coefficient before removal, BIC before and after, and why: `reason`,
    "BIC" or "not determined (...)").
    """
    mask = list(mask)
    removed: dict[int, dict] = {}
    tried_back: set[int] = set()
    while True:
        fit, mask, found = _eliminate(tm, refitter, fit, mask, forced)
        removed.update(found)
        gains = sorted(
            (r["bic_before"] - r["bic_after"], i)
            for i, r in removed.items()
            if not mask[i] and i not in tried_back
        )
        for _, i in gains[:RESTORE]:
            tried_back.add(i)
            trial = list(mask)
            trial[i] = True
            coef = tm.coefficients(fit.params)
            coef[i] = removed[i]["coefficient"]
            f = refitter.fit(trial, start=tm.with_coefficients(fit.params, coef), y0=fit.y0)
            if f.ok and f.bic < fit.bic:
                mask, fit = trial, f
                del removed[i]
                break
        else:
            fit, mask, dropped = _drop_undetermined(tm, refitter, fit, mask, forced)
            if not dropped:
                return fit, mask, list(removed.values())
            removed.update(dropped)
            tried_back.update(i for i, _ in dropped)
