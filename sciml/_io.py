"""Atomic output: a file appears complete or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# Temporary files of writes in progress in this process: removed by `discard_pending` when the
# process must exit at once (`pipelines._signals.hard_stop`), where no `finally` block runs.
_pending: set[Path] = set()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    _pending.add(tmp_path)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    finally:
        _pending.discard(tmp_path)


def discard_pending() -> None:
    """Remove the temporary files of this process's unfinished writes (on an immediate exit)."""
    for tmp in list(_pending):
        tmp.unlink(missing_ok=True)
        _pending.discard(tmp)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def _finite(obj: Any) -> Any:
    """JSON has no NaN or infinity: write them as null rather than invalid JSON."""
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    return obj


def json_text(obj: Any, indent: int | None = 2) -> str:
    """`obj` as JSON text; non-finite numbers become null, NumPy values plain numbers."""
    return json.dumps(_finite(obj), indent=indent, default=_default, allow_nan=False)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as JSON atomically; non-finite numbers become null."""
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(obj) + "\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
