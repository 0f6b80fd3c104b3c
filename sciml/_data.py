"""Trajectory data: loading, validation and batching (docs/data.md).

Long-form CSV or Parquet: a time column, one numeric column per state and, optionally, a
trajectory id column. Every refusal is a `DataError` whose message names the file and, where it
applies, the column, the row (1-based data row, header excluded) and the trajectory.
"""

from __future__ import annotations

import collections
import dataclasses
import keyword
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._errors import DataError
from ._model import _NAME, RESERVED

MIN_POINTS = 3
_MAX_ABS = 1e150  # beyond this, squares overflow float64: treated as corrupt input
# Big inputs. A file above MAX_FILE_BYTES (CSV) or MAX_ROWS rows (Parquet) is refused before it
# is read (reading it would take several times its size in memory). Below that, a data set of
# more than MAX_POINTS points is thinned, with a logged note: each trajectory keeps at most
# MAX_PER_TRAJECTORY evenly spaced samples (its first and last among them), and at most
# MAX_TRAJECTORIES trajectories are kept (evenly spaced in the file's order).
MAX_FILE_BYTES = 512 * 2**20
MAX_ROWS = 10_000_000
MAX_POINTS = 50_000
MAX_PER_TRAJECTORY = 2_000
MAX_TRAJECTORIES = 2_000

log = logging.getLogger("sciml")


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """One trajectory: strictly increasing times `t` (M,) and states `y` (M, D).

    Partial observation (docs/partial-observation.md): `obs` (M, K) holds the values of the
    model's observation equations (NaN where not measured), and `observed` (M, D + K) says
    which states and observations were measured at each time (None: every state, no
    observation equations). Where a state was not measured, `y` holds an estimate: the
    interpolation of its measured values, a fitted model's simulation (`with_states`), or NaN
    where there is none yet.
    """

    name: str
    t: np.ndarray
    y: np.ndarray
    obs: np.ndarray | None = None
    observed: np.ndarray | None = None

    @property
    def t0(self) -> float:
        return float(self.t[0])

    @property
    def t1(self) -> float:
        return float(self.t[-1])

    def take(self, rows) -> Trajectory:
        """The samples `rows` (an index array or a slice) of this trajectory."""
        return Trajectory(
            self.name,
            self.t[rows],
            self.y[rows],
            None if self.obs is None else self.obs[rows],
            None if self.observed is None else self.observed[rows],
        )

    def mask(self, k: int = 0) -> np.ndarray:
        """(M, D + k) bool: which states (and `k` observations) were measured."""
        if self.observed is not None:
            return self.observed
        return np.ones((len(self.t), self.y.shape[1] + k), dtype=bool)


#: How many times the data's largest value (plus its scale) a state may reach before a solve
#: counts as blown up (`TrajectorySet.blow_up_bound`).
BLOW_UP = 100.0


@dataclasses.dataclass(frozen=True)
class TrajectorySet:
    """Several trajectories of the same states, possibly of different lengths and sampling.

    `observables` names the model's observation equations whose values the data hold
    (`Trajectory.obs`); with them, or with states not measured everywhere, the set is
    `partial`.
    """

    states: tuple[str, ...]
    trajectories: tuple[Trajectory, ...]
    source: str = "<memory>"
    observables: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.trajectories:
            raise DataError(f"{self.source}: no trajectories")

    def __len__(self) -> int:
        return len(self.trajectories)

    @property
    def names(self) -> list[str]:
        return [tr.name for tr in self.trajectories]

    @property
    def n_points(self) -> int:
        return sum(len(tr.t) for tr in self.trajectories)

    @property
    def channels(self) -> tuple[str, ...]:
        """What each data point may hold: the states, then the observations."""
        return (*self.states, *self.observables)

    @property
    def partial(self) -> bool:
        """Whether some state is not measured at some sample, or observations are declared."""
        return bool(self.observables) or any(
            tr.observed is not None and not tr.observed.all() for tr in self.trajectories
        )

    def unmeasured(self) -> np.ndarray:
        """(N, D) bool: states never measured in a trajectory (their initial value is a free
        parameter of every fit)."""
        d = len(self.states)
        return np.stack(
            [~tr.mask(len(self.observables))[:, :d].any(axis=0) for tr in self.trajectories]
        )

    def padded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stack into `ts` (N, M), `ys` (N, M, D) and `mask` (N, M), M the longest length.

        Shorter trajectories are padded by repeating their last time and state (so that times
        stay non-decreasing for the ODE solver) with mask 0.
        """
        m = max(len(tr.t) for tr in self.trajectories)
        n, d = len(self.trajectories), len(self.states)
        ts = np.zeros((n, m))
        ys = np.zeros((n, m, d))
        mask = np.zeros((n, m))
        for i, tr in enumerate(self.trajectories):
            k = len(tr.t)
            ts[i, :k], ts[i, k:] = tr.t, tr.t[-1]
            ys[i, :k], ys[i, k:] = tr.y, tr.y[-1]
            mask[i, :k] = 1.0
        return ts, ys, mask

    def padded_channels(self) -> tuple[np.ndarray, np.ndarray]:
        """The measurements as `values` (N, M, D + K) (0 where not measured) and `mask`
        (N, M, D + K) (1 where measured): what every loss compares a model's
        `MechanisticModel.channels` with."""
        m = max(len(tr.t) for tr in self.trajectories)
        n, c = len(self.trajectories), len(self.channels)
        values = np.zeros((n, m, c))
        mask = np.zeros((n, m, c))
        for i, tr in enumerate(self.trajectories):
            k = len(tr.t)
            row = tr.y if tr.obs is None else np.concatenate([tr.y, tr.obs], axis=1)
            seen = tr.mask(len(self.observables))
            values[i, :k] = np.where(seen, row, 0.0)
            mask[i, :k] = seen
        return values, mask

    def channel_scale(self) -> np.ndarray:
        """`state_scale` for the states, then the mean absolute measured value (or 1 if ~0)
        of every observation."""
        if not self.observables:
            return self.state_scale()
        d = len(self.states)
        obs = np.concatenate([tr.obs for tr in self.trajectories])
        seen = np.concatenate([tr.mask(len(self.observables))[:, d:] for tr in self.trajectories])
        scale = np.array(
            [
                np.mean(np.abs(obs[seen[:, j], j])) if seen[:, j].any() else 1.0
                for j in range(obs.shape[1])
            ]
        )
        return np.concatenate([self.state_scale(), np.where(scale > 1e-12, scale, 1.0)])

    def with_states(self, ys: Sequence[np.ndarray]) -> TrajectorySet:
        """A copy whose unmeasured state values are the estimates `ys` (one (M, D) array per
        trajectory); measured values are kept. `self` when every state is measured."""
        if not self.partial:
            return self
        out = []
        for tr, y in zip(self.trajectories, ys, strict=True):
            seen = tr.mask(len(self.observables))[:, : len(self.states)]
            y = np.asarray(y, dtype=float)[: len(tr.t)]
            out.append(dataclasses.replace(tr, y=np.where(seen, tr.y, y)))
        return dataclasses.replace(self, trajectories=tuple(out))

    def blow_up_bound(self, factor: float) -> np.ndarray:
        """Per state, how far from 0 a solve may go before it counts as blown up: `factor`
        times the largest measured value plus the state's scale (inf for a state never
        measured). A solve stopped there costs a few steps, not its step limit (the selection's
        refits; an ensemble member, which then freezes); `factor=math.inf`: no limit."""
        values, seen = self.padded_channels()
        d = len(self.states)
        measured = seen[..., :d] > 0
        magnitude = np.abs(np.nan_to_num(values[..., :d]))
        largest = np.max(np.where(measured, magnitude, 0.0), axis=(0, 1))
        bound = factor * (largest + np.asarray(self.state_scale(), dtype=float))
        return np.where(measured.any(axis=(0, 1)), bound, np.inf)

    def state_scale(self) -> np.ndarray:
        """Per-state scale for weighting residuals: the mean absolute value (or 1 if ~0); of
        the measured values, or of the estimates of a state never measured."""
        allys = np.concatenate([tr.y for tr in self.trajectories])
        if not self.partial:
            scale = np.mean(np.abs(allys), axis=0)
        else:
            d = len(self.states)
            seen = np.concatenate(
                [tr.mask(len(self.observables))[:, :d] for tr in self.trajectories]
            )
            with np.errstate(invalid="ignore"):
                scale = np.array(
                    [
                        np.mean(np.abs(allys[seen[:, j], j]))
                        if seen[:, j].any()
                        else np.nanmean(np.abs(allys[:, j]))
                        if np.isfinite(allys[:, j]).any()
                        else 1.0
                        for j in range(d)
                    ]
                )
        return np.where(scale > 1e-12, scale, 1.0)

    def segments(self, horizon: float, min_points: int = 8) -> Shooting:
        """Each trajectory cut into consecutive pieces about `horizon` time units long (at
        least `min_points` points each), for multiple shooting: each piece is integrated from
        its own initial state, so that an error early on does not compound over the whole
        series (oscillations, chaos, stiff transients)."""
        pieces_out, first, rows, offset = [], [], [], 0
        for tr in self.trajectories:
            first.append(len(pieces_out))
            span = tr.t1 - tr.t0
            pieces = int(span / horizon) if horizon > 0 and math.isfinite(horizon) else 1
            pieces = max(1, min(pieces, len(tr.t) // min_points))
            cuts = np.searchsorted(tr.t, tr.t0 + span * np.arange(1, pieces) / pieces)
            for k, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(tr.t)])):
                name = tr.name if pieces == 1 else f"{tr.name}[{k}]"
                pieces_out.append(dataclasses.replace(tr.take(slice(a, b)), name=name))
                rows.append(offset + a)
            offset += len(tr.t)
        return Shooting(
            dataclasses.replace(self, trajectories=tuple(pieces_out)),
            np.asarray(first),
            np.asarray(rows),
        )

    def split_time(self, fraction: float) -> tuple[TrajectorySet, TrajectorySet | None]:
        """Split each trajectory at `fraction` of its time span: (training, held-out)."""
        train, test = [], []
        for tr in self.trajectories:
            cut = tr.t0 + fraction * (tr.t1 - tr.t0)
            keep = tr.t <= cut + 1e-12
            train.append(tr.take(keep))
            if (~keep).sum() > 0:
                test.append(tr.take(~keep))
        test_set = dataclasses.replace(self, trajectories=tuple(test)) if test else None
        return dataclasses.replace(self, trajectories=tuple(train)), test_set


@dataclasses.dataclass(frozen=True)
class Shooting:
    """Trajectories cut into pieces for multiple shooting (`TrajectorySet.segments`)."""

    pieces: TrajectorySet
    first: np.ndarray  # (trajectories,) index of each trajectory's first piece
    rows: np.ndarray  # (pieces,) each piece's first sample, as a row of the concatenated data

    @property
    def cut(self) -> bool:
        return len(self.pieces) > len(self.first)


def from_arrays(
    states: Sequence[str],
    ts: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    source: str = "<memory>",
    *,
    observables: Sequence[str] = (),
    obs: Sequence[np.ndarray] | None = None,
) -> TrajectorySet:
    """Build a validated `TrajectorySet` from arrays (one entry per trajectory). NaN in `ys`
    marks a state not measured there; `obs` (one (M, K) array per trajectory, NaN where not
    measured) holds the values of the observation equations named `observables`."""
    names = list(names) if names is not None else [str(i) for i in range(len(ts))]
    obs = [None] * len(ts) if obs is None else obs
    trajs = []
    for name, t, y, o in zip(names, ts, ys, obs, strict=True):
        t = np.asarray(t, dtype=float)
        y = np.asarray(y, dtype=float).reshape(len(t), len(states))
        if observables:
            o = np.asarray(o, dtype=float).reshape(len(t), len(observables))
        _check_times(t, source, name, row_offset=0, rows=None)
        trajs.append(_trajectory(str(name), t, y, o if observables else None))
    return TrajectorySet(tuple(states), tuple(trajs), source, tuple(observables))


def _trajectory(name: str, t: np.ndarray, y: np.ndarray, obs: np.ndarray | None) -> Trajectory:
    """A trajectory whose NaN values (in `y` and `obs`) are not measured; a state's missing
    values are estimated by interpolating its measured ones (NaN where it has none)."""
    row = y if obs is None else np.concatenate([y, obs], axis=1)
    seen = np.isfinite(row)
    if seen.all() and obs is None:
        return Trajectory(name, t, y)
    y = y.copy()
    for j in range(y.shape[1]):
        have = seen[:, j]
        if have.any() and not have.all():
            y[~have, j] = np.interp(t[~have], t[have], y[have, j])
    return Trajectory(name, t, y, obs, seen)


def state_columns(
    path: str | os.PathLike[str], *, time: str = "t", trajectory: str = "trajectory"
) -> list[str]:
    """The state columns of a data file read with no model: every column but time and
    trajectory, in the file's order. Raises `DataError` naming a column that cannot be a state."""
    path = Path(path)
    df = _read_table(path)
    columns = [str(c).strip() for c in df.columns]
    if time not in columns:
        raise DataError(f"{path}: no time column {time!r}; found {_clip_list(columns)}")
    states = [c for c in columns if c not in (time, trajectory)]
    if not states:
        raise DataError(f"{path}: no state columns besides {time!r} and {trajectory!r}")
    for c in states:
        if not _NAME.match(c) or keyword.iskeyword(c) or c in RESERVED:
            raise DataError(
                f"{path}: column {_clip(c)!r} cannot name a state in equations: rename it to an "
                "identifier that is not a function or constant name, or pass a model file"
            )
    return states


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a CSV or Parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            rows = pq.ParquetFile(path).metadata.num_rows
            if rows > MAX_ROWS:
                raise DataError(
                    f"{path}: {rows} rows is more than the {MAX_ROWS} this tool reads; keep"
                    " fewer samples per trajectory (every k-th row) or a shorter time window"
                )
            return pd.read_parquet(path)
        if path.stat().st_size == 0:
            raise DataError(f"{path}: file is empty")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DataError(
                f"{path}: {path.stat().st_size / 2**20:.0f} MiB is more than the"
                f" {MAX_FILE_BYTES // 2**20} MiB this tool reads; keep fewer samples per"
                " trajectory (every k-th row) or a shorter time window, or save it as Parquet"
            )
        with path.open("rb") as fh:
            head = fh.read(4096)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise DataError(f"{path}: CSV is UTF-16 encoded; save it as UTF-8")
        if b"\x00" in head:
            raise DataError(f"{path}: not a text CSV file (binary content)")
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as err:
            if err.start < len(head) - 4:  # not just a multi-byte char cut at the 4 KiB edge
                raise DataError(
                    f"{path}: not UTF-8 text (byte {err.start}); save the CSV as UTF-8"
                ) from None
        # header=None: pandas would rename a repeated column name (x, x.1) and silently take a
        # row with surplus fields as an index; read the header as a row, so that both are seen.
        raw = pd.read_csv(
            path, dtype=str, keep_default_na=False, skipinitialspace=True, header=None
        )
        df = raw.iloc[1:].reset_index(drop=True)
        df.columns = [str(c) for c in raw.iloc[0]]
        return df
    except DataError:
        raise
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason}); save the CSV as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file has no columns (empty or blank)") from None
    except pd.errors.ParserError as err:
        msg = str(err).strip().splitlines()[0]
        raise DataError(f"{path}: cannot be read as CSV: {msg}") from None
    except Exception as err:  # pyarrow and friends raise many types for corrupt files
        kind = "Parquet" if suffix in (".parquet", ".pq") else "CSV"
        raise DataError(f"{path}: cannot be read as {kind}: {err}") from None


def _clip(text: str, n: int = 40) -> str:
    """`text` shortened for an error message."""
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def _clip_list(names: list[str], n: int = 20) -> str:
    """`names` as a list for an error message, at most `n` of them."""
    shown = ", ".join(repr(_clip(c)) for c in names[:n])
    more = f", ... ({len(names) - n} more)" if len(names) > n else ""
    return f"[{shown}{more}]"


def _numeric_column(
    df: pd.DataFrame, col: str, path: Path, *, allow_missing: bool = False
) -> np.ndarray:
    """The column as floats; with `allow_missing`, empty cells and NaN are NaN (not measured)."""
    raw = df[col]
    if raw.dtype == object or pd.api.types.is_string_dtype(raw):
        text = raw.astype(str).str.strip()
        missing = (text == "") | text.str.lower().isin(["nan", "na", "n/a", "null", "none"])
        gap = missing.to_numpy() if allow_missing else np.zeros(len(text), dtype=bool)
        if allow_missing:
            text = text.where(~missing, "nan")
            missing = missing & False
        if missing.any():
            row = int(np.argmax(missing.to_numpy())) + 1
            raise DataError(f"{path}: column {col!r}, row {row}: missing value (empty or NaN)")
        values = pd.to_numeric(text, errors="coerce")
        bad = values.isna().to_numpy() & ~gap
        if bad.any():
            row = int(np.argmax(bad)) + 1
            raise DataError(
                f"{path}: column {col!r}, row {row}: non-numeric value "
                f"{_clip(text.iloc[row - 1])!r}"
            )
        values = values.to_numpy(dtype=float)
    else:
        if pd.api.types.is_bool_dtype(raw) or not pd.api.types.is_numeric_dtype(raw):
            raise DataError(f"{path}: column {col!r}: not numeric (dtype {raw.dtype})")
        values = raw.to_numpy(dtype=float)
        nan = np.isnan(values) & (not allow_missing)
        if nan.any():
            row = int(np.argmax(nan)) + 1
            raise DataError(f"{path}: column {col!r}, row {row}: missing value (NaN)")
    bad = ~np.isfinite(values) | (np.abs(values) > _MAX_ABS)
    if allow_missing:
        bad &= ~np.isnan(values)
    if bad.any():
        row = int(np.argmax(bad)) + 1
        raise DataError(
            f"{path}: column {col!r}, row {row}: value {float(values[row - 1])!r} is not a finite "
            f"number of usable size (|value| must be below {_MAX_ABS:g})"
        )
    return values


def _check_times(t: np.ndarray, source, name, row_offset: int, rows: np.ndarray | None) -> None:
    label = f"trajectory {name!r}"
    if len(t) < MIN_POINTS:
        raise DataError(
            f"{source}: {label} has {len(t)} point(s); at least {MIN_POINTS} are needed"
        )
    dt = np.diff(t)
    bad = dt <= 0
    if bad.any():
        k = int(np.argmax(bad)) + 1
        row = int(rows[k]) if rows is not None else k + 1
        what = "duplicate" if dt[k - 1] == 0 else "unsorted (decreasing)"
        raise DataError(
            f"{source}: {label}, row {row + row_offset}: {what} time {float(t[k])!r}"
            f" after {float(t[k - 1])!r}"
            "; times must increase within a trajectory"
        )


def load_trajectories(
    path: str | os.PathLike[str],
    states: Sequence[str],
    *,
    time: str = "t",
    trajectory: str = "trajectory",
    measured: Sequence[str] | None = None,
    observables: Sequence[str] = (),
) -> TrajectorySet:
    """Load and validate long-form trajectory data from CSV or Parquet.

    **Arguments:**
    - `path`: the data file.
    - `states`: the model's states, in its order.
    - `time`: the time column's name.
    - `trajectory`: the trajectory id column; optional in the file (one trajectory if absent).
    - `measured`: the states that have a column (None: every state); the others are
      unmeasured (docs/partial-observation.md).
    - `observables`: the columns of the model's observation equations.

    Empty cells and NaN are allowed in state and observation columns (not measured there),
    never in the time column; every row must measure something.

    **Raises** `DataError` naming the file, column and row of the first problem found.
    """
    path = Path(path)
    df = _read_table(path)
    df.columns = [str(c).strip() for c in df.columns]
    if len(df) == 0:
        raise DataError(f"{path}: no data rows (only a header)")
    counts = collections.Counter(df.columns)
    dupes = sorted(c for c, n in counts.items() if n > 1 and c)
    if dupes:
        raise DataError(f"{path}: duplicate column name(s) {dupes}")
    measured = list(states) if measured is None else [s for s in states if s in measured]
    columns = [*measured, *observables]
    if time in columns or trajectory in columns or time == trajectory:
        raise DataError(
            f"{path}: the time column {time!r}, the trajectory column {trajectory!r} and the "
            f"state columns {columns} must all differ"
        )
    missing = [c for c in [time, *columns] if not c or c not in df.columns]
    if missing:
        hint = (
            "; a state the data do not measure is declared in the model file's [observed]"
            " section (docs/partial-observation.md)"
            if set(missing) & set(states)
            else ""
        )
        raise DataError(
            f"{path}: missing column(s) {missing}; found {_clip_list(list(df.columns))} "
            f"(states come from the model file, the time column from [data] time){hint}"
        )
    t_all = _numeric_column(df, time, path)
    values = {c: _numeric_column(df, c, path, allow_missing=True) for c in columns}
    for c in columns:
        if np.isnan(values[c]).all():
            raise DataError(f"{path}: column {c!r} has no values (every cell empty or NaN)")
    if columns:
        empty = np.all(np.isnan(np.stack([values[c] for c in columns], axis=1)), axis=1)
        if empty.any():
            row = int(np.argmax(empty)) + 1
            raise DataError(
                f"{path}: row {row}: no measured value (every state column empty or NaN)"
            )
    nan = np.full(len(df), np.nan)
    y_all = np.stack([values.get(s, nan) for s in states], axis=1)
    obs_all = np.stack([values[c] for c in observables], axis=1) if observables else None
    if trajectory in df.columns:
        col = df[trajectory]
        ids = col.astype(str).str.strip().to_numpy()
        absent = col.isna().to_numpy() | (ids == "")
        if absent.any():
            row = int(np.argmax(absent)) + 1
            raise DataError(f"{path}: column {trajectory!r}, row {row}: missing trajectory id")
    else:
        ids = np.full(len(df), "0", dtype=object)
    codes, order = pd.factorize(ids)  # ids in order of first appearance
    grouped = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(order)))[:-1]
    trajs = []
    for name, rows in zip(order, np.split(grouped, bounds), strict=True):
        t = t_all[rows]
        _check_times(t, path, name, row_offset=1, rows=rows)
        obs = None if obs_all is None else obs_all[rows]
        trajs.append(_trajectory(str(name), t, y_all[rows], obs))
    return thin(TrajectorySet(tuple(states), tuple(trajs), str(path), tuple(observables)))


def thin(data: TrajectorySet) -> TrajectorySet:
    """`data` itself when it has at most `MAX_POINTS` points and no trajectory longer than
    `MAX_PER_TRAJECTORY`; else thinned to fit (at most `MAX_TRAJECTORIES` trajectories, evenly
    spaced samples of each, first and last kept), with a logged note saying what was kept."""
    n_points, longest = data.n_points, max(len(tr.t) for tr in data.trajectories)
    if n_points <= MAX_POINTS and longest <= MAX_PER_TRAJECTORY:
        return data
    trajs = data.trajectories
    if len(trajs) > MAX_TRAJECTORIES:
        keep = np.unique(np.linspace(0, len(trajs) - 1, MAX_TRAJECTORIES).round().astype(int))
        trajs = tuple(trajs[i] for i in keep)
    per = max(MIN_POINTS, min(MAX_PER_TRAJECTORY, MAX_POINTS // len(trajs)))
    thinned = []
    for tr in trajs:
        if len(tr.t) > per:
            idx = np.unique(np.linspace(0, len(tr.t) - 1, per).round().astype(int))
            tr = tr.take(idx)
        thinned.append(tr)
    out = dataclasses.replace(data, trajectories=tuple(thinned))
    kept = f"{len(out)} of {len(data)} trajectories (evenly spaced in the file), " * (
        len(out) < len(data)
    )
    log.warning(
        "%s: %d points (longest trajectory %d) is more than this tool uses (%d in all, %d per "
        "trajectory); using %d points: %sat most %d evenly spaced samples of each trajectory, "
        "first and last kept. To choose other points, pass a shorter window or a subsample.",
        data.source,
        n_points,
        longest,
        MAX_POINTS,
        MAX_PER_TRAJECTORY,
        out.n_points,
        kept,
        per,
    )
    return out
