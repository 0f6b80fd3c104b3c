"""Reviewing a finished discovery run: a person accepts or rejects terms, the run is refitted.

`review_choices(run_dir)` lists what can be decided; `review_run(run_dir, Decision(...))` refits
and writes the run's next revision; `mark_awaiting(run_dir)` records that a run waits for a
review. A run's review status is one of `NOT_REVIEWED`, `AWAITING`, `REVIEWED`.
"""

from ._review import (
    AWAITING,
    NOT_REVIEWED,
    REVIEWED,
    Decision,
    mark_awaiting,
    review_choices,
    review_run,
)

__all__ = [
    "AWAITING",
    "NOT_REVIEWED",
    "REVIEWED",
    "Decision",
    "mark_awaiting",
    "review_choices",
    "review_run",
]
