"""The notebook API: `sciml.discover(...)`, `sciml.cnf(...)` and `sciml.classify(...)`.

Each is a thin layer over the stage code the command line and the Prefect flows run
(`sciml.discover.load_inputs` and `run_loaded`, `sciml.cnf.run_cnf`,
`sciml.classify.run_classify`): inputs from memory or from files, settings as keywords checked
against the stage's config (an unknown one is refused by name), and a frozen result to read.
The three names are the subpackages themselves, made callable (`sciml/__init__.py`), so
`sciml.discover.run_discovery` and the stage functions stay where they are. docs/api.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sympy as sp

from ._data import TrajectorySet
from ._errors import InputError
from ._io import atomic_path, write_text
from ._latex import equation_expressions, equations_latex
from ._model import MechanisticModel, load_model, model_from_dict, model_from_toml
from ._precision import ensure_float64

DATA_FILE = "input.parquet"  # a DataFrame or TrajectorySet, saved into the run folder
MODEL_FILE = "model.toml"  # a model given as a TOML string, saved into the run folder
TERM_COLUMNS = ("state", "term", "coefficient", "stderr", "origin", "kept")


# -- settings -----------------------------------------------------------------------------------
def _unknown(what: str, given: Sequence[str], known: Sequence[str], also: Sequence[str]) -> None:
    bad = sorted(set(given) - set(known) - set(also))
    if bad:
        raise InputError(
            f"{what}: unknown setting(s) {', '.join(bad)}; known: {', '.join(sorted(known))}"
            + (f" (and {', '.join(also)})" if also else "")
        )


def discovery_config(**settings: Any):
    """A `DiscoveryConfig` from keyword settings: its fields, plus `quick` (the short UDE
    schedule of `UDEConfig.quick()`); `ude` may be a `UDEConfig` or a dict of its fields (over
    the default or quick schedule); `engines` a list or a comma-separated string."""
    from ._ude import UDEConfig
    from .discover import DiscoveryConfig

    known = [f.name for f in dataclasses.fields(DiscoveryConfig)] + ["quick"]
    _unknown("sciml.discover", list(settings), known, ("out", "show_progress", "max_minutes"))
    quick = bool(settings.pop("quick", False))
    base = UDEConfig().quick() if quick else UDEConfig()
    ude = settings.pop("ude", None)
    if ude is None:
        ude = base
    elif isinstance(ude, Mapping):
        _unknown(
            "sciml.discover ude", list(ude), [f.name for f in dataclasses.fields(UDEConfig)], ()
        )
        ude = UDEConfig.from_dict({**base.to_dict(), **ude})
    elif not isinstance(ude, UDEConfig):
        raise InputError(f"sciml.discover: ude must be a UDEConfig or a dict; got {ude!r}")
    if isinstance(settings.get("engines"), str):
        settings["engines"] = tuple(settings["engines"].split(","))
    elif "engines" in settings:
        settings["engines"] = tuple(settings["engines"])
    return DiscoveryConfig(**settings, ude=ude)


# -- inputs -------------------------------------------------------------------------------------
def _is_toml_text(model: str) -> bool:
    """A string is TOML text when it has a line break or starts with a table (`[model]`)."""
    return "\n" in model or model.lstrip().startswith("[")


def _model(model: Any) -> tuple[MechanisticModel | None, Path | None]:
    """(the model, its file) from None (no theory), a path, a TOML string or a dict."""
    if model is None or isinstance(model, MechanisticModel):
        return model, None
    if isinstance(model, Mapping):
        return model_from_dict(model, source="<dict>"), None
    if isinstance(model, str) and _is_toml_text(model):
        return model_from_toml(model), None
    if isinstance(model, str | os.PathLike):
        return load_model(model), Path(model)
    raise InputError(
        "sciml.discover: model must be None, a path, a TOML string or a dict; "
        f"got {type(model).__name__}"
    )


def trajectories_frame(data: TrajectorySet, time: str = "t", trajectory: str = "trajectory"):
    """`data` in long form (docs/data.md): time, trajectory id, then one column per state."""
    frames = []
    for tr in data.trajectories:
        frame = pd.DataFrame(tr.y, columns=list(data.states))
        frame.insert(0, trajectory, tr.name)
        frame.insert(0, time, tr.t)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _frame(data: Any, model: MechanisticModel | None) -> pd.DataFrame | None:
    """`data` as a long-form DataFrame, or None when it is a path."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, TrajectorySet):
        if model is not None:
            return trajectories_frame(data, model.time_column, model.trajectory_column)
        return trajectories_frame(data)
    if isinstance(data, str | os.PathLike):
        return None
    raise InputError(
        "sciml.discover: data must be a pandas DataFrame, a TrajectorySet or a path to a CSV or "
        f"Parquet file; got {type(data).__name__}"
    )


def _save_frame(frame: pd.DataFrame, path: Path) -> None:
    frame = frame.rename(columns=str).reset_index(drop=True)
    try:
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
    except (ValueError, TypeError, ImportError) as err:  # pyarrow: mixed or odd column types
        raise InputError(f"DataFrame: cannot be stored as a table ({err})") from None


def _relabel(err: Exception, path: Path, label: str) -> Exception:
    """`err` again, its message naming `label` instead of a temporary file."""
    return type(err)(str(err).replace(str(path), label))


@contextlib.contextmanager
def _folder(out: str | os.PathLike[str] | None, prefix: str) -> Iterator[Path]:
    """`out`, or a temporary folder removed afterwards (the result is read into memory)."""
    if out is not None:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


# -- discovery ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class Discovery:
    """The result of `sciml.discover`: the content of `discovered.json` and what goes with it.

    - `equations`: the final model, state -> right-hand side with numbers inlined;
    - `parameters`: the mechanistic fit's parameters; `latex`: state -> LaTeX equation;
    - `discovered`: all of `discovered.json` (docs/outputs.md); `config`: the settings used;
    - `candidates`: every engine's candidates (`equations.csv`), `predictions`: each model
      simulated in and past the data (`predictions.parquet`);
    - `out`: the run folder, or None when the files were not kept.
    """

    discovered: dict[str, Any]
    config: Any  # DiscoveryConfig
    model: MechanisticModel
    data: TrajectorySet
    candidates: pd.DataFrame
    predictions: pd.DataFrame
    timings: dict[str, float]
    out: Path | None
    run: Any  # sciml.report.Run: what the report shows

    @property
    def equations(self) -> dict[str, str]:
        return dict(self.discovered.get("equations") or {})

    @property
    def parameters(self) -> dict[str, float]:
        return dict(self.discovered.get("parameters") or {})

    @property
    def latex(self) -> dict[str, str | None]:
        latex = self.discovered.get("latex")
        if isinstance(latex, dict):
            return dict(latex)
        return equations_latex(self.equations, self._names())

    @property
    def warnings(self) -> list[str]:
        """The report's warnings (not its notes), as one line each."""
        from .report import findings

        return [f"{f.title}: {f.detail}" for f in findings(self.run) if f.level == "warning"]

    def _names(self) -> list[str]:
        return [*self.model.states, *self.model.parameters]

    def to_sympy(self) -> dict[str, sp.Expr]:
        """State -> right-hand side as a SymPy expression in real symbols named as the states
        (`sp.Symbol("S", real=True)`; never SymPy's own `S`, `I`, `E` or `N`)."""
        return equation_expressions(self.equations, self._names())

    def to_latex(self) -> str:
        """Every final equation in one LaTeX `aligned` block."""
        lines = [eq.replace(" = ", " &= ", 1) for eq in self.latex.values() if eq]
        return "\\begin{aligned}\n" + " \\\\\n".join(lines) + "\n\\end{aligned}"

    def table(self) -> pd.DataFrame:
        """One row per term of the final model: state, term, coefficient (refit to the data),
        stderr, origin (theory or discovered), kept (False: pruned), plus the ensemble's
        frequency and interval when there was one. Empty when nothing was discovered."""
        terms = self.discovered.get("terms") or []
        frame = pd.DataFrame(terms)
        for column in TERM_COLUMNS:
            if column not in frame:
                frame[column] = pd.Series(dtype=object)
        return frame[[*TERM_COLUMNS, *[c for c in frame.columns if c not in TERM_COLUMNS]]]

    def report(self, path: str | os.PathLike[str]) -> Path:
        """Write the review report (one self-contained HTML page) to `path` (a file, or a
        folder to hold `report.html`); returns the file's path."""
        from .report._html import REPORT, report_html

        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / REPORT
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, report_html(self.run))
        return path

    def _rmse(self) -> dict[str, float]:
        metrics = self.discovered.get("metrics") or {}
        return metrics.get("final_rmse") or metrics.get("mechanistic_rmse") or {}

    def __repr__(self) -> str:
        rmse = self._rmse()
        lines = [f"Discovery of {len(self.equations)} equation(s):"]
        for state, eq in self.equations.items():
            err = rmse.get(state)
            tail = f"   (RMSE {err:.3g})" if isinstance(err, int | float) else ""
            lines.append(f"  d{state}/dt = {eq}{tail}")
        if self.parameters:
            values = ", ".join(f"{k}={v:.6g}" for k, v in self.parameters.items())
            lines.append(f"  mechanistic parameters: {values}")
        engines = (self.discovered.get("engines") or {}).get("used") or []
        lines.append(f"  engines: {', '.join(engines) or 'none'}; warnings: {len(self.warnings)}")
        if "partial" in self.discovered:
            lines.append(f"  PARTIAL: {self.discovered['partial'].get('reason')}")
        lines.append(f"  run folder: {self.out if self.out is not None else 'not kept'}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from .report._math import mathml, parse

        rmse = self._rmse()
        rows = "".join(
            f"<tr><td>{mathml(parse(eq, self._names(), where=s), lhs=s, text=eq)}</td>"
            f"<td>{_fmt(rmse.get(s))}</td></tr>"
            for s, eq in self.equations.items()
        )
        warned = "".join(f"<li>{html.escape(w)}</li>" for w in self.warnings)
        return (
            f"<div><b>Discovery</b> ({html.escape(str(self.out or 'run folder not kept'))})"
            f"<table><tr><th>equation</th><th>RMSE</th></tr>{rows}</table>"
            + (f"<p>Warnings:</p><ul>{warned}</ul>" if warned else "<p>No warnings.</p>")
            + "</div>"
        )


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "—"


def discover(
    data: Any,
    model: Any = None,
    *,
    out: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
    max_minutes: float | None = None,
    **settings: Any,
) -> Discovery:
    """Discover the equations of `data` given the theory in `model` (docs/api.md).

    - `data`: a pandas DataFrame in long form (docs/data.md: a time column, an optional
      trajectory column, one column per state), a `TrajectorySet`, or a CSV/Parquet path;
    - `model`: a model file's path, its TOML text, a dict of the same content, or None (no
      theory: every column but time and trajectory is a state, learned whole);
    - `out`: the run folder (the files of docs/outputs.md; the data and a TOML string model are
      saved there as `input.parquet` and `model.toml` when they are not files); None: a
      temporary folder, read back and removed;
    - `show_progress`, `max_minutes`: as `run_discovery`;
    - `settings`: `DiscoveryConfig` fields (`seed`, `engines`, `holdout`, `ensemble`,
      `n_starts`, `extrapolate`, ...), `quick`, and `ude` (a dict of `UDEConfig` fields).

    Runs the stages `run_discovery` runs (`sciml.discover.run_loaded`), in float64.
    Bad input raises `InputError` (`DataError`, `ModelFileError`) before anything is written.
    """
    from .discover import TimeBudget, load_inputs, run_loaded
    from .report import load_run

    ensure_float64()
    config = discovery_config(**settings)
    TimeBudget(max_minutes)  # a bad budget fails before any work
    built, model_file = _model(model)
    frame = _frame(data, built)
    with tempfile.TemporaryDirectory(prefix="sciml-input-") as tmp:
        data_file = Path(data) if frame is None else Path(tmp) / DATA_FILE
        if frame is None:
            loaded_model, loaded = load_inputs(data_file, built)
        else:
            _save_frame(frame, data_file)
            try:
                loaded_model, loaded = load_inputs(data_file, built)
            except InputError as err:
                raise _relabel(err, data_file, "DataFrame") from None
        with _folder(out, "sciml-discovery-") as folder:
            folder.mkdir(parents=True, exist_ok=True)
            data_source: Path | str = data_file
            if frame is not None:  # kept with the run, so that its report can be rendered again
                data_source = folder / DATA_FILE if out is not None else "<DataFrame>"
                if out is not None:
                    shutil.copyfile(data_file, folder / DATA_FILE)
            if isinstance(model, str) and _is_toml_text(model) and out is not None:
                model_file = folder / MODEL_FILE
                write_text(model_file, model)
            result = run_loaded(
                loaded_model,
                loaded,
                config,
                folder,
                data_source=data_source,
                model_source=model_file,
                show_progress=show_progress,
                max_minutes=max_minutes,
            )
            run = load_run(folder, data=loaded)
    return Discovery(
        discovered={k: v for k, v in result.items() if k not in ("out", "timings")},
        config=config,
        model=loaded_model,
        data=loaded,
        candidates=run.candidates if run.candidates is not None else pd.DataFrame(),
        predictions=run.predictions if run.predictions is not None else pd.DataFrame(),
        timings=dict(result.get("timings") or {}),
        out=None if out is None else Path(out),
        run=run,
    )


# -- CNF ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class DensityFit:
    """The result of `sciml.cnf`: `metrics` (`metrics.json`), the trained `model` (a `CNF`),
    its data `columns`, the loss curves `history` (`history.csv`) and the folder `out` (None:
    not kept)."""

    metrics: dict[str, Any]
    model: Any  # sciml.cnf.CNF
    columns: tuple[str, ...]
    history: pd.DataFrame
    out: Path | None

    def log_prob(self, x: Any, *, seed: int = 0) -> np.ndarray:
        """Log-density (nats, data units) of each row of `x` (array or DataFrame of `columns`)."""
        from .cnf import evaluate_log_prob

        if isinstance(x, pd.DataFrame):
            x = x[list(self.columns)].to_numpy()
        import jax.random as jr

        trace = self.metrics.get("eval_trace", "auto")
        logp, _ = evaluate_log_prob(self.model, np.asarray(x, float), trace=trace, key=jr.key(seed))
        return logp

    def sample(self, n: int, *, seed: int = 0) -> pd.DataFrame:
        """`n` samples from the fitted density, as a DataFrame of `columns`."""
        import jax.random as jr

        from .cnf import sample

        x, stats = sample(self.model, int(n), key=jr.key(seed))
        if not bool(stats.ok):
            raise InputError("sampling solve failed (step limit or divergence)")
        return pd.DataFrame(np.asarray(x, float), columns=list(self.columns))

    def __repr__(self) -> str:
        m = self.metrics
        se = m.get("test_nll_se")
        return (
            f"DensityFit({m.get('dim')}-D, test NLL {m.get('test_nll', float('nan')):.4g}"
            + (f" ± {se:.2g}" if isinstance(se, float) else "")
            + f" nats, {m.get('steps')} steps, stopped: {m.get('stopped')}, "
            f"run folder: {self.out if self.out is not None else 'not kept'})"
        )


def _table_file(data: Any, folder: Path, name: str) -> Any:
    """A DataFrame or array saved into `folder` as CSV (the stage reads files); else `data`."""
    if isinstance(data, np.ndarray):
        data = pd.DataFrame(data, columns=[f"x{i}" for i in range(np.shape(data)[-1])])
    if isinstance(data, pd.DataFrame):
        path = folder / name
        with atomic_path(path) as tmp:
            data.rename(columns=str).to_csv(tmp, index=False)
        return path
    if isinstance(data, str | os.PathLike):
        return data
    raise InputError(
        "sciml.cnf: data must be a DataFrame, an array, a file path or 'sklearn:NAME'; "
        f"got {type(data).__name__}"
    )


def cnf(
    data: Any,
    *,
    test: Any = None,
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    n_samples: int = 2000,
    plots: bool = True,
    progress: bool = False,
    time_limit: float | None = None,
    **settings: Any,
) -> DensityFit:
    """Fit a continuous normalising flow to the rows of `data` (`sciml.cnf.run_cnf`).

    `data`, `test`: a DataFrame, an array (N, D), a CSV/Parquet/NPZ path or `"sklearn:NAME"`;
    `settings`: `CNFConfig` fields (`steps`, `width`, `depth`, `batch_size`, ...); `out`: the
    output folder (None: temporary, read back and removed). Float32, as the CLI's stage.
    """
    from .cnf import CNFConfig, load_cnf, run_cnf

    known = [f.name for f in dataclasses.fields(CNFConfig)]
    _unknown("sciml.cnf", list(settings), known, ())
    config = CNFConfig(**settings)
    with _folder(out, "sciml-cnf-") as folder:
        folder.mkdir(parents=True, exist_ok=True)
        data_file = _table_file(data, folder, "data.csv")
        test_file = None if test is None else _table_file(test, folder, "test.csv")
        metrics = run_cnf(
            data_file,
            folder,
            test=test_file,
            seed=seed,
            config=config,
            n_samples=n_samples,
            plots=plots and out is not None,
            progress=progress,
            time_limit=time_limit,
        )
        model = load_cnf(folder)
        history = pd.read_csv(folder / "history.csv")
    return DensityFit(
        metrics, model, tuple(metrics["columns"]), history, None if out is None else Path(out)
    )


# -- classifier ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class Classification:
    """The result of `sciml.classify`: `metrics` (`metrics.json`, with the per-epoch history),
    the `trained` classifier (`predict`, `predict_proba` on raw images) and `out` (None: not
    kept)."""

    metrics: dict[str, Any]
    trained: Any  # sciml.classify.TrainedClassifier
    out: Path | None

    def predict(self, images: Any) -> np.ndarray:
        return self.trained.predict(images)

    def predict_proba(self, images: Any) -> np.ndarray:
        return self.trained.predict_proba(images)

    @property
    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.metrics.get("history") or {})

    def __repr__(self) -> str:
        m = self.metrics
        return (
            f"Classification({m.get('model')} on {m.get('data')}: test accuracy "
            f"{m.get('test_accuracy', float('nan')):.2%}, {m.get('epochs')} epochs, "
            f"run folder: {self.out if self.out is not None else 'not kept'})"
        )


def _images_file(data: Any, folder: Path, name: str) -> tuple[str | None, Any]:
    """(bundled dataset name, None) or (None, NPZ path); `(images, labels)` saved as NPZ."""
    from .classify import DATASETS

    if isinstance(data, str) and data in DATASETS:
        return data, None
    if isinstance(data, tuple) and len(data) == 2:
        path = folder / name
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, images=np.asarray(data[0]), labels=np.asarray(data[1]))
        return None, path
    if isinstance(data, str | os.PathLike):
        return None, data
    raise InputError(
        f"sciml.classify: data must be a bundled dataset ({', '.join(DATASETS)}), an NPZ path "
        f"or a tuple (images, labels); got {type(data).__name__}"
    )


def classify(
    data: Any,
    *,
    test: Any = None,
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = False,
    time_limit: float | None = None,
    **settings: Any,
) -> Classification:
    """Train the neural-ODE image classifier (`sciml.classify.run_classify`).

    `data`: a bundled dataset name (`digits`, `shapes`, `textures`, `bars`), an NPZ path or a
    tuple `(images, labels)`; `test` the same (default: a stratified split); `settings`:
    `ClassifierConfig` fields (`epochs`, `model`, `width`, ...) over the defaults the sample
    shape gives; `out`: the output folder (None: temporary, read back and removed).
    """
    from .classify import ClassifierConfig, load_classifier, run_classify

    known = [f.name for f in dataclasses.fields(ClassifierConfig)]
    _unknown("sciml.classify", list(settings), known, ())
    with _folder(out, "sciml-classify-") as folder:
        folder.mkdir(parents=True, exist_ok=True)
        dataset, data_file = _images_file(data, folder, "data.npz")
        test_file = None if test is None else _images_file(test, folder, "test.npz")[1]
        config = None
        if settings:
            config = _classifier_defaults(dataset, data_file).replace(**settings)
        metrics = run_classify(
            dataset=dataset,
            data=data_file,
            test=test_file,
            out=folder,
            seed=seed,
            config=config,
            progress=progress,
            time_limit=time_limit,
        )
        trained = load_classifier(folder)
    return Classification(metrics, trained, None if out is None else Path(out))


def _classifier_defaults(dataset: str | None, data_file: Any):
    """`default_config` for the data's sample shape (what `run_classify` uses without one)."""
    from .classify import default_config, load_digits, load_npz, make_image_set
    from .classify._run import GENERATED_SEED, GENERATED_SIDE

    if dataset == "digits":
        shape = load_digits().sample_shape
    elif dataset is not None:
        shape = make_image_set(dataset, 10, size=GENERATED_SIDE, seed=GENERATED_SEED).sample_shape
    else:
        shape = load_npz(data_file).sample_shape
    return default_config(shape)
