"""Tabular data for density estimation: loading and validation.

A table is CSV or Parquet with numeric columns only, an NPZ file holding one 2-D array, or a
bundled scikit-learn data set named `sklearn:NAME` (never downloaded). Every refusal is a
`DataError` whose message names the file and, where it applies, the column and the row (1-based
data row, header excluded).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from .._data import _numeric_column, _read_table
from .._errors import DataError

#: Bundled scikit-learn data sets accepted as `sklearn:NAME` (features only; no download).
SKLEARN_DATASETS = ("iris", "wine", "breast_cancer", "diabetes")


@dataclasses.dataclass(frozen=True)
class Table:
    """Rows `values` (N, D) of float64 with column names and where they came from."""

    values: np.ndarray
    columns: tuple[str, ...]
    source: str

    @property
    def dim(self) -> int:
        return self.values.shape[1]

    def __len__(self) -> int:
        return self.values.shape[0]


def _from_sklearn(name: str) -> Table:
    import sklearn.datasets

    if name not in SKLEARN_DATASETS:
        raise DataError(
            f"sklearn:{name}: unknown bundled data set; choose one of "
            + ", ".join(f"sklearn:{n}" for n in SKLEARN_DATASETS)
        )
    bunch = getattr(sklearn.datasets, f"load_{name}")()
    columns = tuple(str(c) for c in bunch.feature_names)
    return Table(np.asarray(bunch.data, dtype=np.float64), columns, f"sklearn:{name}")


def _from_npz(path: Path) -> Table:
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if len(names) != 1:
                raise DataError(
                    f"{path}: expected exactly one array in the NPZ file, found {names}"
                )
            arr = npz[names[0]]
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - zipfile/pickle errors for corrupt files
        raise DataError(f"{path}: cannot be read as NPZ: {err}") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataError(
            f"{path}: array {names[0]!r} has shape {arr.shape}; expected (rows, columns)"
        )
    if not (
        np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)
    ):
        raise DataError(f"{path}: array {names[0]!r} is not real numeric (dtype {arr.dtype})")
    values = arr.astype(np.float64)
    columns = tuple(f"x{j}" for j in range(values.shape[1]))
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        what = "missing value (NaN)" if np.isnan(values[row, col]) else "infinite value"
        raise DataError(f"{path}: column {col} ({columns[col]!r}), row {row + 1}: {what}")
    return Table(values, columns, str(path))


def _from_table_file(path: Path) -> Table:
    df = _read_table(path)
    df.columns = [str(c).strip() for c in df.columns]
    if len(df.columns) == 0:
        raise DataError(f"{path}: no columns")
    dupes = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column name(s) {dupes}")
    if len(df) == 0:
        raise DataError(f"{path}: no data rows (only a header)")
    values = np.stack([_numeric_column(df, c, path) for c in df.columns], axis=1)
    return Table(values, tuple(df.columns), str(path))


def load_table(source: str | os.PathLike[str]) -> Table:
    """Load and validate a numeric table for density estimation.

    `source`: a CSV/Parquet file (every column numeric), an NPZ file with one array, or
    `"sklearn:NAME"` for a bundled scikit-learn data set (see `SKLEARN_DATASETS`).

    **Raises** `DataError` naming the file, column and row of the first problem: missing or
    empty file, non-numeric value, NaN/missing value, a column of constant value.
    """
    text = os.fspath(source)
    if text.startswith("sklearn:"):
        table = _from_sklearn(text.split(":", 1)[1])
    else:
        path = Path(text)
        if not path.exists():
            raise DataError(f"{path}: no such file")
        if path.is_file() and path.stat().st_size == 0:
            raise DataError(f"{path}: file is empty")
        if path.suffix.lower() == ".npz":
            table = _from_npz(path)
        else:
            table = _from_table_file(path)
    check_not_constant(table)
    return table


def check_not_constant(table: Table) -> None:
    """A constant column has no density (it is a point mass): refuse it, naming the column."""
    if len(table) < 2:
        return
    spread = np.ptp(table.values, axis=0)
    scale = np.maximum(np.abs(table.values).max(axis=0), 1.0)
    const = spread <= 1e-12 * scale
    if const.any():
        j = int(np.argmax(const))
        raise DataError(
            f"{table.source}: column {table.columns[j]!r} is constant (value "
            f"{table.values[0, j]!r} in all {len(table)} rows, row 1 to row {len(table)}); "
            "a density needs every column to vary: drop it"
        )


def check_rows(table: Table, min_rows: int, what: str) -> None:
    if len(table) < min_rows:
        raise DataError(
            f"{table.source}: {len(table)} data row(s) (last row {len(table)}); "
            f"at least {min_rows} are needed {what}"
        )


def align_columns(train: Table, test: Table) -> Table:
    """`test` with the training table's columns in the training order.

    Names must match (in any order); an NPZ table has no names, so only its width must.
    """
    unnamed = train.source.endswith(".npz") or test.source.endswith(".npz")
    if unnamed and test.dim == train.dim:
        return test
    if test.dim != train.dim or set(test.columns) != set(train.columns):
        missing = [c for c in train.columns if c not in test.columns]
        extra = [c for c in test.columns if c not in train.columns]
        raise DataError(
            f"{test.source}: columns differ from {train.source}: missing {missing}, "
            f"unexpected {extra}"
        )
    order = [test.columns.index(c) for c in train.columns]
    return Table(test.values[:, order], train.columns, test.source)
