"""The discovery pipeline as plain functions: one per stage, and `run_discovery` over them all.

Prefect tasks in `pipelines/` call these stage functions one each; `run_discovery` runs them in
order without Prefect (for tests, notebooks and the library's own users).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd
import sympy as sp

from ._config import Config
from ._data import TrajectorySet, load_trajectories, state_columns
from ._errors import InputError
from ._identify import identifiability_summary
from ._io import atomic_path, write_json
from ._latex import equations_latex
from ._mechanistic import MechanisticFit, fit_mechanistic
from ._model import MechanisticModel, load_model, no_theory_model
from ._rundir import run_directory
from ._smooth import smooth
from ._ude import TrainedUDE, UDEConfig, estimate_states, train_ude
from .distil import (
    DenseSamples,
    Selection,
    dense_samples,
    model_field,
    rmse,
    select_and_refit,
    simulate_grids,
)

log = logging.getLogger("sciml")

RESULT_FILES = ("discovered.json", "equations.csv", "report.html", "ensemble.csv")
KNOWN_ENGINES = ("sindy", "operon", "pysr")
MAX_ENSEMBLE = 1024


@dataclasses.dataclass(frozen=True)
class DiscoveryConfig(Config):
    """Everything that determines a discovery run's result (hashed for caching)."""

    seed: int = 0
    engines: tuple[str, ...] = KNOWN_ENGINES
    n_starts: int = 8
    fit_initial_state: bool = True
    holdout: float = 0.0  # fraction of each trajectory's span kept out of training
    extrapolate: float = 0.5  # simulate this fraction of the span past the data
    n_extra_starts: int = 4
    ensemble: int = 0  # K > 0: also K UDEs in one program, each distilled (`_ensemble`)
    ude: UDEConfig = UDEConfig()

    def __post_init__(self) -> None:
        names = self.engines.split(",") if isinstance(self.engines, str) else self.engines
        engines = tuple(str(e).strip().lower() for e in names)
        object.__setattr__(self, "engines", engines)
        super().__post_init__()

    def problems(self) -> list[str]:
        problems = []
        if not 0.0 <= self.holdout < 0.9:
            problems.append(f"holdout must be in [0, 0.9); got {self.holdout}")
        if not 0 <= self.ensemble <= MAX_ENSEMBLE:
            problems.append(
                f"ensemble must be 0 (none) to {MAX_ENSEMBLE} members; got {self.ensemble}"
            )
        unknown = [e for e in self.engines if e not in KNOWN_ENGINES]
        if unknown or not self.engines:
            problems.append(f"unknown engine(s) {unknown}; choose from {list(KNOWN_ENGINES)}")
        if self.n_starts < 1 or self.n_extra_starts < 0:
            problems.append("n_starts must be at least 1 and n_extra_starts not negative")
        if self.extrapolate < 0:
            problems.append("extrapolate must not be negative")
        if not isinstance(self.ude, UDEConfig):
            problems.append("ude must be a UDEConfig")
        return problems

    @classmethod
    def make(
        cls,
        *,
        seed: int = 0,
        engines: str | Sequence[str] = KNOWN_ENGINES,
        quick: bool = False,
        holdout: float = 0.0,
        ensemble: int = 0,
        ude: Mapping[str, Any] | None = None,
    ) -> DiscoveryConfig:
        """The settings the CLI exposes; `quick` shortens UDE training (for smoke tests); `ude`
        overrides `UDEConfig` fields over that schedule (`sciml discover --ude`), unknown
        names refused (`InputError` naming them)."""
        schedule = UDEConfig().quick() if quick else UDEConfig()
        if ude:
            if not isinstance(ude, Mapping):
                raise InputError(f"ude must be a table of UDE settings; got {ude!r}")
            schedule = UDEConfig.from_dict({**schedule.to_dict(), **ude})
        return cls(seed=seed, engines=engines, ude=schedule, holdout=holdout, ensemble=ensemble)


def versions() -> dict[str, str]:
    import diffrax
    import equinox
    import optax

    from . import __version__

    return {
        "sciml": __version__,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "diffrax": diffrax.__version__,
        "equinox": equinox.__version__,
        "optax": optax.__version__,
        "device": str(jax.devices()[0]),
    }


# -- stages ------------------------------------------------------------------------------------
def load_inputs(
    data_path: str | Path, model_path: str | Path | MechanisticModel | None
) -> tuple[MechanisticModel, TrajectorySet]:
    """Stage 1: read and validate the model file and the trajectory data.

    Without a model file (`model_path` None) there is no theory: every column but `t` and
    `trajectory` is a state whose whole right-hand side is learned and distilled. A model
    already built (`sciml.api`: from a TOML string or a dict) is used as it is.
    """
    if model_path is None:
        model = no_theory_model(state_columns(data_path))
    elif isinstance(model_path, MechanisticModel):
        model = model_path
    else:
        model = load_model(model_path)
    data = load_trajectories(
        data_path,
        model.states,
        time=model.time_column,
        trajectory=model.trajectory_column,
        measured=model.measured_states,
        observables=model.observables,
    )
    return model, data


def split_data(
    data: TrajectorySet, config: DiscoveryConfig
) -> tuple[TrajectorySet, TrajectorySet | None]:
    """Training data and the held-out tail of each trajectory (None without a holdout)."""
    if config.holdout <= 0:
        return data, None
    return data.split_time(1.0 - config.holdout)


def mechanistic_stage(
    model: MechanisticModel, data: TrajectorySet, config: DiscoveryConfig
) -> MechanisticFit:
    """Stage 2: least-squares fit of the declared model."""
    return fit_mechanistic(
        model,
        data,
        key=jax.random.key(config.seed),
        n_starts=config.n_starts,
        fit_initial_state=config.fit_initial_state,
    )


def ude_stage(
    fit: MechanisticFit,
    data: TrajectorySet,
    config: DiscoveryConfig,
    progress: Callable[[str, int, int, float], None] | None = None,
    checkpoint: str | Path | None = None,
) -> TrainedUDE:
    """Stage 3: train the universal differential equation (resumable from `checkpoint`)."""
    return train_ude(
        fit,
        data,
        key=jax.random.key(config.seed + 1),
        config=config.ude,
        progress=progress,
        checkpoint=checkpoint,
    )


def dense_stage(trained: TrainedUDE, data: TrajectorySet, config: DiscoveryConfig) -> DenseSamples:
    """Stage 4: dense states and the network's residual along the learned field, plus the
    smoothed data's states and derivative residuals (the collocation view)."""
    data = estimate_states(trained, data)  # unmeasured values from the UDE (partial data)
    return dense_samples(
        trained,
        data,
        key=jax.random.key(config.seed + 2),
        n_extra_starts=config.n_extra_starts,
        smoothed=smooth(data),
    )


# Engines cheap enough to run on both sample sets (the network's and the smoothed data's).
_BOTH_SAMPLE_SETS = ("sindy",)


def symbolic_stage(
    dense: DenseSamples, engine: str, config: DiscoveryConfig
) -> tuple[pd.DataFrame, str | None]:
    """Stage 5, one engine: candidates for every residual state, or why it is unavailable.

    Every engine regresses the network's residual along the learned field; the cheap ones
    (SINDy) also regress the smoothed data's derivative residual, so that a network that
    trained poorly does not leave selection without good candidates. Column `samples` says
    which ("ude" or "data"); selection refits all of them through the ODE against the data.
    """
    from .symbolic import EngineUnavailable, make_engines

    sets = [("ude", dense.from_ude())]
    if engine in _BOTH_SAMPLE_SETS and len(dense.from_data().X) >= 2:
        sets.append(("data", dense.from_data()))
    parts = []
    for samples, part_dense in sets:
        for j, state in enumerate(part_dense.residual_states):
            (eng,) = make_engines([engine], seed=config.seed)
            if samples == "data" and "n_bootstrap" in eng.get_params():
                eng.set_params(n_bootstrap=0)  # ranked and refit by selection; no bagging
            try:
                eng.fit(part_dense.X, part_dense.residual[:, j], feature_names=list(dense.states))
            except EngineUnavailable as err:
                return pd.DataFrame(), str(err)
            part = eng.equations_.copy()
            part.insert(0, "samples", samples)
            part.insert(0, "engine", engine)
            part.insert(0, "state", state)
            parts.append(part)
    return pd.concat(parts, ignore_index=True), None


def selection_stage(
    model: MechanisticModel,
    fit: MechanisticFit,
    table: pd.DataFrame,
    data: TrajectorySet,
    config: DiscoveryConfig,
    trained: TrainedUDE | None = None,
) -> Selection:
    """Stage 6: formulas back into the model, every constant refit, needless terms pruned
    (values the data lack estimated by the trained UDE, `estimate_states`)."""
    if trained is not None:
        data = estimate_states(trained, data)
    return select_and_refit(
        model,
        fit.params,
        table,
        data,
        fit_initial_state=config.fit_initial_state,
        # selection's own candidates from the data: SINDy's (cubic) library, where it is asked
        library_degree=3 if "sindy" in config.engines else None,
    )


# Engines the ensemble's members are distilled with (PySR takes minutes per fit: main run only).
ENSEMBLE_ENGINES = ("sindy", "operon")


def ensemble_stage(
    model: MechanisticModel,
    fit: MechanisticFit,
    data: TrajectorySet,
    config: DiscoveryConfig,
    progress: Callable[[str, int, int, float], None] | None = None,
) -> dict[str, Any]:
    """`config.ensemble` UDEs trained together in one compiled program (different keys and
    bootstrap resamples of the points), each distilled by the run's engines (PySR aside) and
    selection, its model refit to a random half of the data; returns each discovered term's
    inclusion frequency and coefficient interval (`sciml._ensemble.summarise_ensemble`)."""
    from ._ensemble import distil_members, summarise_ensemble, train_ensemble

    smoothed = smooth(data)
    ensemble = train_ensemble(
        fit,
        data,
        config.ensemble,
        key=jax.random.key(config.seed + 3),
        config=config.ude,
        smoothed=smoothed,
        progress=progress,
    )
    engines = [e for e in config.engines if e in ENSEMBLE_ENGINES]

    def candidates(dense: DenseSamples) -> pd.DataFrame:
        parts = [symbolic_stage(dense, engine, config)[0] for engine in engines]
        return pd.concat(parts, ignore_index=True)

    def select(table: pd.DataFrame) -> Selection:
        return selection_stage(model, fit, table, data, config)

    members = distil_members(
        ensemble,
        data,
        candidates=candidates,
        select=select,
        key=jax.random.key(config.seed + 4),
        n_extra_starts=config.n_extra_starts,
        smoothed=smoothed,
        fit_initial_state=config.fit_initial_state,
        log=log.info,
    )
    return {**summarise_ensemble(members), "engines": engines, "steps": ensemble.steps}


def _horizon(data: TrajectorySet, test: TrajectorySet | None, extrapolate: float, n: int = 300):
    grids = []
    for tr in data.trajectories:
        end = tr.t1 + extrapolate * (tr.t1 - tr.t0)
        if test is not None and tr.name in test.names:
            end = max(end, test.trajectories[test.names.index(tr.name)].t1)
        grids.append(np.linspace(tr.t0, end, n))
    return np.stack(grids)


def evaluation_stage(
    model: MechanisticModel,
    fit: MechanisticFit,
    trained: TrainedUDE | None,
    selection: Selection | None,
    train: TrajectorySet,
    test: TrajectorySet | None,
    config: DiscoveryConfig,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Errors of the mechanistic, UDE and final models in and past the training window.

    Returns the metrics and the dense predictions of every model (for the report).
    """
    models: dict[str, tuple[Any, np.ndarray]] = {
        "mechanistic": (model_field(model, fit.params), fit.y0)
    }
    if trained is not None:
        models["ude"] = (trained.ude, trained.y0)
    if selection is not None:
        models["final"] = (model_field(selection.final_model(), []), selection.refit.y0)
    return evaluate_fields(models, model.states, train, test, config)


def _largest(data: TrajectorySet) -> np.ndarray:
    """Each state's largest absolute measured value (inf for a state never measured)."""
    if not data.partial:
        return np.max(np.abs(np.concatenate([tr.y for tr in data.trajectories])), axis=0)
    values, mask = data.padded_channels()
    d = len(data.states)
    largest = np.max(np.where(mask[..., :d] > 0, np.abs(values[..., :d]), -np.inf), axis=(0, 1))
    return np.where(np.isfinite(largest), largest, np.inf)


def _observation_rmse(field: Any, pred: np.ndarray, data: TrajectorySet) -> dict[str, float]:
    """RMSE of every observation equation's column for a field's simulated states `pred`."""
    from ._mechanistic import predicted_channels

    params = field.mechanistic_params() if hasattr(field, "mechanistic_params") else field.params
    values, mask = data.padded_channels()
    d = len(data.states)
    ok = np.isfinite(pred).all(axis=-1, keepdims=True)
    chan = np.asarray(
        predicted_channels(field.model, params, data.padded()[0], np.nan_to_num(pred))
    )[..., d:]
    chan = np.where(ok, chan, np.inf)
    return dict(zip(data.observables, rmse(chan, values[..., d:], mask[..., d:]).tolist()))


def evaluate_fields(
    models: dict[str, tuple[Any, np.ndarray]],
    states: Sequence[str],
    train: TrajectorySet,
    test: TrajectorySet | None,
    config: DiscoveryConfig,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """`evaluation_stage` for any named vector fields (name -> (field, initial states))."""
    ts, ys, mask = train.padded()
    if train.partial:  # the measured values only
        mask = train.padded_channels()[1][..., : len(states)]
    grid = _horizon(train, test, config.extrapolate)
    data_max = _largest(train)
    metrics: dict[str, Any] = {"extrapolation_bounded": {}}
    dense: dict[str, np.ndarray] = {}
    if test is not None:  # the held-out tails, each trajectory integrated from its own start
        idx = [train.names.index(n) for n in test.names]
        tts, tys, tmask = test.padded()
        if test.partial:  # the measured values only
            tmask = test.padded_channels()[1][..., : len(states)]
        full = np.concatenate([ts[idx], tts], axis=1)
    for name, (field, y0s) in models.items():
        y0s = np.asarray(y0s)
        runs = [(y0s, ts), (y0s, grid)] + ([(y0s[idx], full)] if test is not None else [])
        (pred, _), (dense[name], ok), *held = simulate_grids(field, runs)
        metrics[f"{name}_rmse"] = dict(zip(states, rmse(pred, ys, mask).tolist()))
        if train.observables:  # and of every observation equation's column
            metrics[f"{name}_rmse"].update(_observation_rmse(field, pred, train))
        if held:
            err = rmse(held[0][0][:, ts.shape[1] :], tys, tmask)
            metrics[f"{name}_rmse_holdout"] = dict(zip(states, err.tolist()))
        bounded = bool(np.all(ok)) and bool(np.all(np.abs(dense[name]) <= 10 * data_max))
        metrics["extrapolation_bounded"][name] = bounded
    if "final" in dense and "ude" in dense:
        diff = np.nan_to_num(dense["final"] - dense["ude"], nan=1e6, posinf=1e6, neginf=-1e6)
        rel = np.linalg.norm(diff, axis=(0, 1)) / np.maximum(
            np.linalg.norm(dense["ude"], axis=(0, 1)), 1e-12
        )
        metrics["final_vs_ude_extrapolation"] = dict(zip(states, rel.tolist()))
    frames = []
    for name, pred in dense.items():
        for i, traj in enumerate(train.names):
            frame = pd.DataFrame(pred[i], columns=list(states))
            frame.insert(0, "t", grid[i])
            frame.insert(0, "trajectory", traj)
            frame.insert(0, "model", name)
            frames.append(frame)
    return metrics, pd.concat(frames, ignore_index=True)


def summarise(
    model: MechanisticModel,
    fit: MechanisticFit,
    selection: Selection | None,
    metrics: dict[str, Any],
    config: DiscoveryConfig,
    unavailable: dict[str, str],
    ensemble: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of `discovered.json` (docs/outputs.md), deterministic for a given seed; with an
    `ensemble` summary (`ensemble_stage`), each discovered term's frequency and interval."""
    result: dict[str, Any] = {
        "parameters": fit.parameter_dict,
        "equations": model.inlined(fit.params),
        "residual": {},
        "metrics": metrics,
        "mechanistic": {"equations": model.inlined(fit.params), "cost": fit.cost},
        "engines": {
            "requested": list(config.engines),
            "used": [e for e in config.engines if e not in unavailable],
            "unavailable": unavailable,
        },
    }
    names = [*model.states, *model.parameters]
    result["latex"] = equations_latex(result["equations"], names)  # LaTeX per final equation
    if selection is None:
        return result
    refit = selection.refit
    result["equations"] = selection.equations()
    result["latex"] = equations_latex(result["equations"], names)
    # Each term's form kept as a SymPy object (inner constants such as k in tanh(k*x) inlined):
    # text would have to be parsed back, and SymPy's parser takes state names such as S, I, E,
    # N, O or Q for its own objects.
    fitted = selection.fitted_terms()
    terms, forms = [t.to_dict() for t in fitted], [t.form for t in fitted]
    result["terms"] = terms
    for state, chosen in selection.chosen.items():
        formula = sp.Add(
            *[
                sp.Float(t["coefficient"], 6) * form
                for t, form in zip(terms, forms)
                if t["state"] == state and t["kept"] and t["origin"] == "discovered"
            ]
        )
        result["residual"][state] = {
            **{k: v for k, v in chosen.items() if k != "row"},
            "final": str(formula),
        }
    if ensemble is not None:
        from ._ensemble import annotate_terms

        result["terms"] = annotate_terms(terms, ensemble)
        result["ensemble"] = ensemble
    result["pruned"] = selection.pruned
    result["refit"] = {
        "sse": refit.sse,
        "bic": refit.bic,
        "n": refit.n,
        "candidates_tried": selection.tried,
    }
    return result


# -- outputs -----------------------------------------------------------------------------------
def _write_parquet(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def pareto_csv(table: pd.DataFrame, selection: Selection | None) -> pd.DataFrame:
    """The Pareto table (docs/outputs.md): state, engine, complexity, loss, score, equation,
    selected, then engine-specific columns (JSON-encoded where they hold dicts)."""
    csv = table.drop(columns=[c for c in table.columns if c.startswith("_") or c == "sympy_format"])
    selected = np.zeros(len(table), dtype=bool)
    if selection is not None:
        for chosen in selection.chosen.values():
            selected[table.index.get_loc(chosen["row"])] = True
    csv = csv.assign(selected=selected)
    front = ["state", "engine", "complexity", "loss", "score", "equation", "selected"]
    csv = csv[front + [c for c in csv.columns if c not in front]]
    for col in csv.columns:
        if csv[col].map(lambda v: isinstance(v, dict | list)).any():
            csv[col] = csv[col].map(lambda v: json.dumps(v) if isinstance(v, dict | list) else v)
    return csv


@dataclasses.dataclass(frozen=True)
class EngineCandidates:
    """One engine's candidate formulas for every residual state (`symbolic_stage`), or why the
    engine is unavailable (then `table` is empty)."""

    engine: str
    table: pd.DataFrame
    unavailable: str | None = None

    def save(self, folder: str | Path) -> None:
        """`candidates.parquet` (SymPy objects dropped, rebuilt on load) and `engine.json`."""
        folder = Path(folder)
        df = self.table.drop(columns=[c for c in ("sympy_format",) if c in self.table.columns])
        for col in df.columns:
            if df[col].dtype == object:
                df[col] = df[col].map(
                    lambda v: json.dumps(v, default=str) if isinstance(v, dict | list) else v
                )
        _write_parquet(folder / "candidates.parquet", df)
        write_json(folder / "engine.json", {"engine": self.engine, "unavailable": self.unavailable})

    @classmethod
    def load(cls, folder: str | Path, states: Sequence[str]) -> EngineCandidates:
        """What `save` wrote; `sympy_format` parsed again from `equation` over `states`."""
        from .symbolic import parse_formula

        folder = Path(folder)
        meta = json.loads((folder / "engine.json").read_text())
        table = pd.read_parquet(folder / "candidates.parquet")
        if len(table):
            symbols = {s: sp.Symbol(s, real=True) for s in states}
            table["sympy_format"] = [parse_formula(str(e), symbols) for e in table["equation"]]
        return cls(meta["engine"], table, meta["unavailable"])


@dataclasses.dataclass(frozen=True)
class Findings:
    """What selection and evaluation found, ready to be written (docs/outputs.md): the content
    of `discovered.json`, the Pareto table (`equations.csv`) and the models' predictions."""

    result: dict[str, Any]
    pareto: pd.DataFrame
    predictions: pd.DataFrame

    def save(self, folder: str | Path, run: dict[str, Any] | None = None) -> None:
        """The files, `run.json` (when given) next and `discovered.json` last: a folder with
        `discovered.json` holds all of them."""
        folder = Path(folder)
        _write_parquet(folder / "predictions.parquet", self.predictions)
        if len(self.pareto):
            with atomic_path(folder / "equations.csv") as tmp:
                self.pareto.to_csv(tmp, index=False)
        if "ensemble" in self.result:
            from ._ensemble import ensemble_table

            with atomic_path(folder / "ensemble.csv") as tmp:
                ensemble_table(self.result["ensemble"]).to_csv(tmp, index=False)
        if run is not None:
            write_json(folder / "run.json", run)
        write_json(folder / "discovered.json", self.result)

    @classmethod
    def load(cls, folder: str | Path) -> Findings:
        folder = Path(folder)
        csv = folder / "equations.csv"
        return cls(
            result=json.loads((folder / "discovered.json").read_text()),
            pareto=pd.read_csv(csv) if csv.exists() else pd.DataFrame(),
            predictions=pd.read_parquet(folder / "predictions.parquet"),
        )


def findings_stage(
    model: MechanisticModel,
    fit: MechanisticFit,
    trained: TrainedUDE | None,
    engines: Sequence[EngineCandidates],
    ensemble: dict[str, Any] | None,
    train: TrajectorySet,
    test: TrajectorySet | None,
    config: DiscoveryConfig,
) -> Findings:
    """Stage 7: selection and refit over every engine's candidates (none: no selection), then
    the evaluation of every model and the summary (`discovered.json`)."""
    tables = [e.table for e in engines if e.unavailable is None and len(e.table)]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    selection = selection_stage(model, fit, table, train, config, trained) if len(table) else None
    if selection is not None:
        log.info("final equations: %s", selection.equations())
    metrics, predictions = evaluation_stage(model, fit, trained, selection, train, test, config)
    unavailable = {e.engine: e.unavailable for e in engines if e.unavailable is not None}
    result = summarise(model, fit, selection, metrics, config, unavailable, ensemble)
    if train.partial:  # which parameters and unmeasured initial values the data determine
        result["identifiability"] = identifiability_summary(model, fit, selection, train)
    if selection is not None and selection.table is not None:
        table = selection.table  # with selection's own candidates from the data
    pareto = pareto_csv(table, selection) if len(table) else pd.DataFrame()
    return Findings(result, pareto, predictions)


def write_outputs(
    out: Path,
    findings: Findings,
    timings: dict[str, float],
    partial: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's result files into `out`, `discovered.json` last (marked `partial` when the
    time budget stopped the run early); returns `discovered.json`'s content."""
    result = findings.result if partial is None else {**findings.result, "partial": partial}
    Findings(result, findings.pareto, findings.predictions).save(
        out, run={"timings": timings, "versions": versions()}
    )
    return result


# -- the whole pipeline ------------------------------------------------------------------------
def rich_progress() -> tuple[Any, Callable[[str, int, int, float], None]]:
    """A progress bar (`sciml._progress`) and the callback that advances it."""
    from ._progress import Progress

    bar = Progress("UDE", total=1, enabled=True)
    return bar, bar.stage_callback()


RUN_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


@contextlib.contextmanager
def run_log(out: Path, loggers: Sequence[str] = ("sciml",)) -> Iterator[None]:
    """The run's log, `OUT/run.log` (one format), from the library's logger and `loggers`."""
    handler = logging.FileHandler(out / "run.log", mode="w")
    handler.setFormatter(logging.Formatter(RUN_LOG_FORMAT))
    handler.setLevel(logging.INFO)
    attached = [logging.getLogger(name) for name in dict.fromkeys(("sciml", *loggers))]
    for logger in attached:
        logger.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger in attached:
            logger.removeHandler(handler)
        handler.close()


class TimeBudget:
    """A wall-clock budget (`max_minutes`, None: none), checked between stages: once spent, the
    remaining stages are skipped and `partial` (why, and before which stage) is set; the
    results so far are written as usual, marked partial."""

    def __init__(self, max_minutes: float | None):
        if max_minutes is not None and not max_minutes > 0:
            raise InputError(f"max_minutes must be positive; got {max_minutes}")
        self.max_minutes = max_minutes
        self.deadline = None if max_minutes is None else time.monotonic() + 60.0 * max_minutes
        self.partial: dict[str, Any] | None = None

    def left(self, stage: str) -> bool:
        """Whether `stage` may start; the first time not, the run becomes partial."""
        if self.partial is not None:
            return False
        if self.deadline is None or time.monotonic() < self.deadline:
            return True
        self.partial = {
            "max_minutes": self.max_minutes,
            "stopped_before": stage,
            "reason": f"the time budget ({self.max_minutes:g} min) was spent before {stage}; "
            "later stages were skipped (a rerun with a larger budget reuses the finished "
            "stages where they are cached)",
        }
        log.warning("partial results: %s", self.partial["reason"])
        return False


def run_discovery(
    data_path: str | Path,
    model_path: str | Path | None,
    out: str | Path,
    *,
    seed: int = 0,
    engines: Sequence[str] = KNOWN_ENGINES,
    quick: bool = False,
    holdout: float = 0.0,
    ensemble: int = 0,
    ude: Mapping[str, Any] | None = None,
    show_progress: bool = True,
    max_minutes: float | None = None,
) -> dict[str, Any]:
    """Run every discovery stage and write docs/outputs.md's files into `out`; with `ensemble` K,
    also K UDEs in one program, each distilled (`ensemble.csv`, `discovered.json`). `ude`
    overrides UDE training settings (`UDEConfig` fields, e.g. `{"adam_steps": 50}`) over the
    default or `quick` schedule. With `max_minutes`, stages that would start after that much
    wall-clock time are skipped and the results are marked partial (`TimeBudget`)."""
    config = DiscoveryConfig.make(
        seed=seed, engines=engines, quick=quick, holdout=holdout, ensemble=ensemble, ude=ude
    )
    TimeBudget(max_minutes)  # a bad budget fails before the inputs are read
    model, data = load_inputs(data_path, model_path)  # bad input fails before any folder work
    return run_loaded(
        model,
        data,
        config,
        out,
        data_source=data_path,
        model_source=model_path,
        show_progress=show_progress,
        max_minutes=max_minutes,
    )


def run_loaded(
    model: MechanisticModel,
    data: TrajectorySet,
    config: DiscoveryConfig,
    out: str | Path,
    *,
    data_source: str | Path = "<memory>",
    model_source: str | Path | None = None,
    show_progress: bool = False,
    max_minutes: float | None = None,
) -> dict[str, Any]:
    """`run_discovery` on inputs already loaded (`sciml.api.discover`: a DataFrame, a model
    from a TOML string or a dict): the same stages and the same files in `out`; `data_source`
    and `model_source` are what `config.json` records as their origin."""
    budget = TimeBudget(max_minutes)
    with run_directory(out, clear=RESULT_FILES) as out, run_log(out):
        stages = Stages(show_progress=show_progress, checkpoint=out / "ude-checkpoint")
        sources = describe_inputs(model, data, data_source, model_source)
        return orchestrate(model, data, config, out, stages=stages, budget=budget, inputs=sources)


def describe_inputs(
    model: MechanisticModel,
    data: TrajectorySet,
    data_source: str | Path,
    model_source: str | Path | None,
) -> dict[str, Any]:
    """Where the inputs came from and what they hold (`config.json`'s `inputs`); files by
    content (SHA-256: the Prefect stages' cache keys), data or models given in memory by a
    hash of what was read."""
    from ._fingerprint import file_digest, json_digest

    def is_file(source: str | Path | None) -> bool:
        try:
            return source is not None and Path(source).is_file()
        except OSError:  # e.g. a model given as TOML text: a name too long for a path
            return False

    def digest(source: str | Path | None, fallback: Any) -> str:
        return file_digest(source) if is_file(source) else json_digest(fallback)

    def where(source: str | Path) -> str:  # a file by its absolute path
        return str(Path(source).resolve()) if is_file(source) else str(source)

    return {
        "data": where(data_source),
        "model": None if model_source is None else where(model_source),
        "data_sha256": digest(data_source, [tr.y.tolist() for tr in data.trajectories]),
        "model_sha256": (
            "no-theory" if model_source is None else digest(model_source, model.describe())
        ),
        "states": list(model.states),
        "residual_states": list(model.residual_states),
        "n_trajectories": len(data),
        "n_points": data.n_points,
    }


class Stages:
    """How each stage runs. This class calls the library's stage functions in this process;
    the Prefect flow's `pipelines.tasks.CachedStages` runs each as a cached task (load, stage,
    save) and returns the loaded result. `orchestrate` calls them in order, so both ways run
    the same pipeline and write the same files."""

    def __init__(self, *, show_progress: bool = False, checkpoint: Path | None = None):
        self.show_progress = show_progress
        self.checkpoint = checkpoint

    mechanistic = staticmethod(mechanistic_stage)
    dense = staticmethod(dense_stage)
    findings = staticmethod(findings_stage)

    def ude(self, fit: MechanisticFit, train: TrajectorySet, config: DiscoveryConfig) -> TrainedUDE:
        if not self.show_progress:
            return ude_stage(fit, train, config, None, self.checkpoint)
        bar, callback = rich_progress()
        with bar:
            return ude_stage(fit, train, config, callback, self.checkpoint)

    def engine(self, dense: DenseSamples, engine: str, config: DiscoveryConfig) -> EngineCandidates:
        table, reason = symbolic_stage(dense, engine, config)
        return EngineCandidates(engine, table, reason)

    def ensemble(
        self,
        model: MechanisticModel,
        fit: MechanisticFit,
        train: TrajectorySet,
        engines: Sequence[str],
        config: DiscoveryConfig,
    ) -> dict[str, Any]:
        return ensemble_stage(model, fit, train, config.replace(engines=tuple(engines)))


def orchestrate(
    model: MechanisticModel,
    data: TrajectorySet,
    config: DiscoveryConfig,
    out: Path,
    *,
    stages: Stages,
    budget: TimeBudget,
    inputs: dict[str, Any],
) -> dict[str, Any]:
    """The discovery pipeline, stage by stage (`stages` says how each runs), into `out`:
    `config.json` first, then the UDE and dense samples as they are made, the result files and
    `run.json` (every stage's seconds), `discovered.json` last (docs/outputs.md)."""
    if config.ensemble and data.partial:
        raise InputError(
            f"{data.source}: --ensemble is not available for partially observed data (states"
            " not measured or observation equations); run without it"
        )
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        value = fn(*args)
        timings[name] = time.perf_counter() - start
        log.info("stage %s: %.1f s", name, timings[name])
        return value

    log.info(
        "data %s: %d trajectories, %d points; states %s",
        inputs["data"],
        len(data),
        data.n_points,
        list(model.states),
    )
    write_json(
        out / "config.json",
        {
            "data": inputs["data"],
            "model_file": inputs["model"],
            "inputs": inputs,
            "model": model.describe(),
            "config": config.to_dict(),
            "versions": versions(),
        },
    )
    train, test = split_data(data, config)
    fit = timed("mechanistic", stages.mechanistic, model, train, config)
    log.info("mechanistic fit: %s (cost %.4g, %s)", fit.parameter_dict, fit.cost, fit.message)
    trained: TrainedUDE | None = None
    engines: list[EngineCandidates] = []
    if model.residual_states and budget.left("UDE training"):
        trained = timed("ude", stages.ude, fit, train, config)
        trained.save(out)
    if trained is not None and budget.left("dense sampling"):
        dense = timed("dense", stages.dense, trained, train, config)
        _write_parquet(out / "dense.parquet", dense.to_frame())
        for engine in config.engines:
            if not budget.left(f"symbolic regression ({engine})"):
                break
            found = timed(f"engine:{engine}", stages.engine, dense, engine, config)
            if found.unavailable is not None:
                log.warning("engine %s unavailable: %s", engine, found.unavailable)
            engines.append(found)
    found_any = any(e.unavailable is None and len(e.table) for e in engines)
    if found_any and not budget.left("selection and refit"):
        engines = [e for e in engines if e.unavailable is not None]  # evaluate, do not select
        found_any = False
    ensemble = None
    if found_any and config.ensemble and budget.left("ensemble"):
        usable = [e.engine for e in engines if e.unavailable is None and len(e.table)]
        ensemble = timed("ensemble", stages.ensemble, model, fit, train, usable, config)
    findings = timed(
        "selection", stages.findings, model, fit, trained, engines, ensemble, train, test, config
    )
    result = write_outputs(out, findings, timings, budget.partial)
    return {**result, "out": str(out), "timings": timings}
