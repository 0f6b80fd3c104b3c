"""One progress bar for every long loop (UDE, CNF and classifier training, benchmark suites).

    with Progress("CNF", total=steps, completed=start) as bar:
        ...
        bar.update(step, note=f"loss {loss:.3f}")

It is drawn on stderr (rich): the label, the bar, done/total, a note, elapsed and remaining
time. Disabled (`enabled=False`, or by default when stderr is not a terminal) it draws nothing
and costs nothing, so loops call it unconditionally.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class Progress:
    """A progress bar for `total` units of work, `completed` of them already done."""

    def __init__(
        self,
        label: str,
        total: int,
        *,
        completed: int = 0,
        enabled: bool | None = None,
        note: str = "",
    ):
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self._state = {"total": total, "completed": completed, "description": note}
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn(f"[bold]{self.label}[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(**self._state)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None

    def update(
        self,
        completed: int | None = None,
        *,
        advance: int = 0,
        total: int | None = None,
        note: str | None = None,
    ) -> None:
        """Set the units done (`completed`) or add `advance`; change the total or the note."""
        state = self._state
        if completed is not None:
            state["completed"] = completed
        state["completed"] += advance
        if total is not None:
            state["total"] = total
        if note is not None:
            state["description"] = note
        if self._bar is not None:
            self._bar.update(self._task, **state)

    @property
    def completed(self) -> int:
        return self._state["completed"]

    def stage_callback(self) -> Callable[[str, int, int, float], None]:
        """A callback `(stage, step, total, loss)`, as `train_ude` calls its `progress`."""

        def callback(stage: str, step: int, total: int, loss: float) -> None:
            self.update(step, total=total, note=f"{stage}  loss {loss:.3g}")

        return callback
