"""Task results as files: content hashes and the few (de)serialisers the library does not have
yet (a mechanistic fit as JSON, a candidate table as Parquet).

Prefect's own result records are JSON (`result_serializer="json"`) and hold only paths and small
values; the science lives in Parquet, JSON and equinox files under the results folder, in one
folder per task and cache key: `RESULTS/<task>-<key>/` (`pipelines._cache`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- serialisers (to move into sciml: see docs/orchestration.md) --------------------------------
def save_fit(fit: Any, path: Path) -> None:
    from sciml._io import write_json

    write_json(
        path,
        {
            "parameters": fit.parameter_dict,
            "params": np.asarray(fit.params).tolist(),
            "y0": np.asarray(fit.y0).tolist(),
            "cost": float(fit.cost),
            "rmse": np.asarray(fit.rmse).tolist(),
            "n_starts": int(fit.n_starts),
            "success": bool(fit.success),
            "message": str(fit.message),
        },
    )


def load_fit(path: str | Path, model: Any) -> Any:
    from sciml import MechanisticFit

    d = json.loads(Path(path).read_text())
    return MechanisticFit(
        model=model,
        params=np.asarray(d["params"], dtype=float),
        y0=np.asarray(d["y0"], dtype=float),
        cost=float(d["cost"]),
        rmse=np.asarray(d["rmse"], dtype=float),
        n_starts=int(d["n_starts"]),
        success=bool(d["success"]),
        message=str(d["message"]),
    )


def save_candidates(table: pd.DataFrame, path: Path) -> None:
    """A candidate table as Parquet: SymPy objects dropped (the `equation` string stays)."""
    from sciml._io import atomic_path

    df = table.drop(columns=[c for c in ("sympy_format",) if c in table.columns])
    for col in df.columns:
        if df[col].dtype == object:
            df[col] = df[col].map(
                lambda v: json.dumps(v, default=str) if isinstance(v, dict | list) else v
            )
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def load_candidates(paths: Sequence[str | Path], states: Sequence[str]) -> pd.DataFrame:
    """Candidate tables back into one table, `sympy_format` parsed again from `equation`."""
    import sympy as sp

    from sciml.symbolic import parse_formula

    frames = [pd.read_parquet(p) for p in paths]
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    symbols = {s: sp.Symbol(s, real=True) for s in states}
    table["sympy_format"] = [parse_formula(str(e), symbols) for e in table["equation"]]
    return table
