"""All a report shows, read from a run folder (docs/outputs.md), tolerant of missing parts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._data import TrajectorySet, load_trajectories
from .._errors import InputError
from .._model import load_model


@dataclasses.dataclass(frozen=True)
class Window:
    """One trajectory's data window: training from `t0` to `train_end`, held out to `t1`."""

    t0: float
    train_end: float
    t1: float


@dataclasses.dataclass(frozen=True)
class Run:
    """A discovery run as the report sees it; parts that could not be read are None."""

    path: Path
    discovered: dict[str, Any]
    config: dict[str, Any]
    run: dict[str, Any]
    candidates: pd.DataFrame | None
    predictions: pd.DataFrame | None
    dense: pd.DataFrame | None
    data: TrajectorySet | None
    notes: tuple[str, ...]  # what could not be read, said plainly
    history: dict[str, Any] | None = None  # UDE training: loss per step and phase
    finished: str = ""  # when discovered.json was written (YYYY-MM-DD HH:MM)

    @property
    def states(self) -> list[str]:
        model = self.config.get("model") or {}
        states = model.get("states") or (self.config.get("inputs") or {}).get("states")
        return list(states or self.discovered.get("equations", {}))

    @property
    def residual_states(self) -> list[str]:
        return list(self.discovered.get("residual", {}))

    @property
    def holdout(self) -> float:
        return float((self.config.get("config") or {}).get("holdout", 0.0) or 0.0)

    @property
    def extrapolate(self) -> float:
        return float((self.config.get("config") or {}).get("extrapolate", 0.5) or 0.0)

    def windows(self) -> dict[str, Window]:
        """Per trajectory: where the data (and the training part of it) end."""
        out: dict[str, Window] = {}
        if self.data is not None:
            for tr in self.data.trajectories:
                cut = tr.t0 + (1.0 - self.holdout) * (tr.t1 - tr.t0)
                out[tr.name] = Window(tr.t0, cut, tr.t1)
        elif self.predictions is not None:
            # Predictions run `extrapolate` of the data span past the data's end.
            for name, df in self.predictions.groupby("trajectory", sort=False):
                t0, end = float(df["t"].min()), float(df["t"].max())
                t1 = t0 + (end - t0) / (1.0 + self.extrapolate)
                out[str(name)] = Window(t0, t0 + (1.0 - self.holdout) * (t1 - t0), t1)
        return out

    def points_per_state(self) -> int | None:
        if self.data is not None:
            return self.data.n_points
        n = (self.config.get("inputs") or {}).get("n_points")
        return int(n) if n is not None else None


def _read_json(path: Path) -> dict[str, Any]:
    with open(path) as f:
        value = json.load(f)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _optional_json(path: Path, notes: list[str]) -> dict[str, Any]:
    if not path.exists():
        notes.append(f"{path.name} is missing")
        return {}
    try:
        return _read_json(path)
    except (OSError, ValueError) as err:
        notes.append(f"{path.name} cannot be read ({err})")
        return {}


def _optional_table(path: Path | None, notes: list[str], what: str) -> pd.DataFrame | None:
    if path is None or not path.exists():
        notes.append(f"no {what} found in the run folder")
        return None
    try:
        return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as err:
        notes.append(f"{path.name} cannot be read ({err})")
        return None


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def _find(run_dir: Path, name: str, stage: str) -> Path | None:
    """`run_dir/name`, else the newest copy in a pipeline stage folder under `results/`."""
    direct = run_dir / name
    if direct.exists():
        return direct
    return _newest(sorted(run_dir.glob(f"results/{stage}-*/{name}")))


def _load_data(config: dict[str, Any], states: list[str], notes: list[str]):
    path = config.get("data")
    if not path:
        notes.append("config.json names no data file: the plots show no data points")
        return None
    time, trajectory = "t", "trajectory"
    measured, observables = None, ()  # partial observation: what the model says is measured
    model_file = config.get("model_file")
    if model_file and Path(model_file).exists():
        try:
            model = load_model(model_file)
            time, trajectory = model.time_column, model.trajectory_column
            measured, observables = model.measured_states, model.observables
        except InputError as err:
            notes.append(f"model file {model_file} cannot be read ({err})")
    try:
        return load_trajectories(
            path,
            states,
            time=time,
            trajectory=trajectory,
            measured=measured,
            observables=observables,
        )
    except (InputError, OSError) as err:
        notes.append(f"data file {path} cannot be read ({err}): the plots show no data points")
        return None


def load_run(run_dir: str | os.PathLike[str], *, data: TrajectorySet | None = None) -> Run:
    """Read a run folder. Raises `InputError` when it holds no readable `discovered.json`.

    `data`: the run's trajectory data when the caller holds it (`sciml.api`, whose data may be
    a DataFrame); else it is read from the file `config.json` names.
    """
    path = Path(run_dir)
    target = path / "discovered.json"
    if not target.is_file():
        raise InputError(f"{path}: no discovered.json here; is this a discovery run's folder?")
    try:
        discovered = _read_json(target)
    except (OSError, ValueError) as err:
        raise InputError(f"{target}: cannot be read ({err})") from None
    notes: list[str] = []
    config = _optional_json(path / "config.json", notes)
    run = _optional_json(path / "run.json", notes)
    candidates = _optional_table(
        _find(path, "equations.csv", "selection-and-refit"), notes, "equations.csv"
    )
    predictions = _optional_table(
        _find(path, "predictions.parquet", "selection-and-refit"), notes, "predictions.parquet"
    )
    dense = None
    if discovered.get("residual"):
        dense = _optional_table(
            _find(path, "dense.parquet", "dense-sampling"), notes, "dense.parquet"
        )
    history = None
    if discovered.get("residual"):
        found = _find(path, "history.json", "ude-training")
        history = _optional_json(found, notes) if found is not None else None
    finished = dt.datetime.fromtimestamp(target.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    partial = Run(
        path, discovered, config, run, candidates, predictions, dense, None, (), history, finished
    )
    if data is None:
        data = _load_data(config, partial.states, notes)
    if predictions is not None:
        predictions = predictions.assign(trajectory=predictions["trajectory"].astype(str))
    if dense is not None:
        dense = dense.assign(source=np.asarray(dense["source"]).astype(int))
    return dataclasses.replace(
        partial, predictions=predictions, dense=dense, data=data, notes=tuple(notes)
    )
