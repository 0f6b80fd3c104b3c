"""Run several engines on one regression problem and gather one table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from .._errors import InputError
from ._base import EngineUnavailable, SymbolicEngine
from ._operon import OperonEngine
from ._pysr import PySREngine
from ._sindy import SINDyEngine
from ._table import empty_table

ENGINES: dict[str, type[SymbolicEngine]] = {
    SINDyEngine.name: SINDyEngine,
    OperonEngine.name: OperonEngine,
    PySREngine.name: PySREngine,
}


def make_engines(names: Sequence[str], *, seed: int) -> list[SymbolicEngine]:
    """Engines by name (`sindy`, `operon`, `pysr`), each with default settings and `seed`."""
    engines = []
    for name in names:
        key = name.strip().lower()
        if key not in ENGINES:
            raise InputError(f"unknown symbolic engine {name!r}; known: {', '.join(ENGINES)}")
        engines.append(ENGINES[key](random_state=seed))
    return engines


def run_engines(
    engines: Sequence[SymbolicEngine],
    X: Any,
    y: Any,
    feature_names: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Fit each engine on (X, y) and concatenate their Pareto tables with an `engine` column.

    Engines that raise `EngineUnavailable` are reported in the second value (engine name ->
    reason) and the run goes on; any other error propagates. Engines run one after the other
    in the calling thread (PySR needs the main thread).
    """
    tables = []
    unavailable: dict[str, str] = {}
    for engine in engines:
        name = getattr(engine, "name", type(engine).__name__)
        try:
            engine.fit(X, y, feature_names=feature_names)
        except EngineUnavailable as err:
            unavailable[name] = str(err)
            continue
        tables.append(engine.equations_.assign(engine=name))
    if not tables:
        table = empty_table()
        table.insert(0, "engine", pd.Series([], dtype=object))
        return table, unavailable
    table = pd.concat(tables, ignore_index=True)
    ordered = ["engine", *[c for c in table.columns if c != "engine"]]
    return table[ordered], unavailable
