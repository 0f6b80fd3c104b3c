"""Prefect tasks: each a few lines over one `sciml` call, passing files, not objects.

Every task returns a path or a small JSON value (Prefect records it with the JSON serialiser);
the science is in Parquet, JSON and equinox files under the run's results folder. The expensive
stages use Prefect's cache (`pipelines._cache`): keyed on the input files' contents, the
settings, the library's source and the task's own; SERIALIZABLE, so two runs sharing a results
folder compute a stage once. A re-run with the same inputs skips UDE training; a changed setting
or an edit of the library trains again. Retries are for I/O only, never for bad input.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ._cache import RECORDS, stage_dir, stage_policy


def _retry_io(task: Any, task_run: Any, state: Any) -> bool:
    """Retry on I/O errors (a network file system, a busy disk), never on bad input."""
    from sciml import InputError

    try:
        state.result()
    except InputError:
        return False
    except OSError:
        return True
    except Exception:  # noqa: BLE001 - a bug or a numerical failure: retrying will not help
        return False
    return False


IO = {"retries": 2, "retry_delay_seconds": [1, 5], "retry_condition_fn": _retry_io}
JSON = {"persist_result": True, "result_serializer": "json"}
CACHED = JSON  # the cache policy comes with the results folder: `in_results`
UNCACHED = {**JSON, "cache_policy": NO_CACHE}


def in_results(t: Any, results: str | Path) -> Any:
    """The stage task cached in the results folder: Prefect's records in `RESULTS/.prefect/`,
    locks in `RESULTS/.locks/` (`pipelines._cache.stage_policy`).

    A record whose files were deleted by hand is recomputed (`refresh_cache`) rather than
    returning a path to nothing.
    """
    results = Path(results).resolve()
    cached = t.with_options(result_storage=results / RECORDS, cache_policy=stage_policy(results))

    def run(*args: Any) -> Any:
        value = cached(*args)
        if _gone(value):
            value = cached.with_options(refresh_cache=True)(*args)
        return value

    return run


def _gone(value: Any) -> bool:
    """A stage's result names a file or folder that no longer exists."""
    if isinstance(value, dict):
        value = value.get("candidates")
    return isinstance(value, str) and not Path(value).exists()


# -- helpers shared by tasks -------------------------------------------------------------------
_LOADED: dict[tuple[str, str], tuple[Any, Any]] = {}  # inputs read in this process, by content


def _config(config: dict[str, Any]) -> Any:
    from sciml.discover import DiscoveryConfig

    return DiscoveryConfig.from_dict(config)


def _inputs(inputs: dict[str, Any], config: Any) -> tuple[Any, Any, Any]:
    """Model, training data and held-out data (None) of a run; read once per process."""
    from sciml.discover import split_data

    model, data = loaded(inputs)
    train, test = split_data(data, config)
    return model, train, test


def loaded(inputs: dict[str, Any]) -> tuple[Any, Any]:
    """The model and data that `ingest` read (in this process: not read again)."""
    key = (inputs["data_sha256"], inputs["model_sha256"])
    if key not in _LOADED:
        from sciml.discover import load_inputs

        _LOADED[key] = load_inputs(inputs["data"], inputs["model"])
    return _LOADED[key]


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


# -- discovery stages: load, run the library's stage, save ---------------------------------------
@task(name="ingest", **UNCACHED, **IO)
def ingest(data: str, model: str | None) -> dict[str, Any]:
    """Read and validate the model file (None: no theory) and the data; their content hashes
    key the cache (`sciml.discover.describe_inputs`)."""
    from sciml.discover import describe_inputs, load_inputs

    m, d = load_inputs(data, model)
    inputs = describe_inputs(m, d, data, model)
    _LOADED[(inputs["data_sha256"], inputs["model_sha256"])] = (m, d)
    return inputs


@task(name="mechanistic-fit", **CACHED)
def mechanistic_fit(inputs: dict[str, Any], config: dict[str, Any], results: str) -> str:
    """Least-squares fit of the declared model: `fit.json`."""
    from sciml.discover import mechanistic_stage

    cfg = _config(config)
    model, train, _ = _inputs(inputs, cfg)
    folder = _fresh(stage_dir(results, "mechanistic-fit"))
    mechanistic_stage(model, train, cfg).save(folder / "fit.json")
    return str(folder / "fit.json")


@task(name="ude-training", **CACHED)
def ude_training(inputs: dict[str, Any], fit: str, config: dict[str, Any], results: str) -> str:
    """Train the universal differential equation: `ude.eqx`, `ude.json`, `history.json`."""
    from sciml import MechanisticFit
    from sciml.discover import ude_stage

    cfg = _config(config)
    model, train, _ = _inputs(inputs, cfg)
    target = stage_dir(results, "ude-training")
    checkpoint = Path(results) / "checkpoints" / Path(target).name / "ude"  # survives a kill
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    fitted = MechanisticFit.load(fit, model)
    trained = ude_stage(fitted, train, cfg, progress=_ude_progress(), checkpoint=checkpoint)
    folder = _fresh(target)
    trained.save(folder)
    return str(folder)


def _ude_progress() -> Any:
    """UDE training progress into the task run's log, every tenth of each phase."""
    logger = get_run_logger()
    last = [-1]

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        tenth = 10 * step // max(total, 1)
        if tenth != last[0]:
            last[0] = tenth
            logger.info("UDE %s: step %d/%d, loss %.4g", stage, step, total, loss)

    return progress


@task(name="dense-sampling", **CACHED)
def dense_sampling(inputs: dict[str, Any], ude: str, config: dict[str, Any], results: str) -> str:
    """States and the network's residual sampled densely along the learned field: Parquet."""
    from sciml import load_ude
    from sciml.discover import dense_stage

    cfg = _config(config)
    model, train, _ = _inputs(inputs, cfg)
    dense = dense_stage(load_ude(ude, model, train), train, cfg)
    folder = _fresh(stage_dir(results, "dense-sampling"))
    dense.to_frame().to_parquet(folder / "dense.parquet", index=False)
    return str(folder / "dense.parquet")


@task(name="symbolic-regression", task_run_name="symbolic-{engine}", **CACHED)
def symbolic_regression(
    engine: str, inputs: dict[str, Any], dense: str, config: dict[str, Any], results: str
) -> dict[str, Any]:
    """One engine's candidate formulas for every residual state (or why none): a folder."""
    import pandas as pd

    from sciml.discover import DenseSamples, Stages

    samples = DenseSamples.from_frame(
        pd.read_parquet(dense), inputs["states"], inputs["residual_states"]
    )
    found = Stages().engine(samples, engine, _config(config))
    folder = _fresh(stage_dir(results, f"symbolic-regression-{engine}"))
    found.save(folder)
    usable = found.unavailable is None and len(found.table) > 0
    if found.unavailable is not None:
        print(f"engine {engine} unavailable: {found.unavailable}")
    return {
        "engine": engine,
        "candidates": str(folder) if usable else None,
        "folder": str(folder),
        "unavailable": found.unavailable,
    }


@task(name="ensemble-distillation", **CACHED)
def ensemble_distillation(
    inputs: dict[str, Any],
    fit: str,
    engine_names: list[str],
    config: dict[str, Any],
    results: str,
) -> str:
    """`config["ensemble"]` UDEs trained in one compiled program and each distilled by
    `engine_names`: every discovered term's inclusion frequency and coefficient interval
    (`ensemble.json`)."""
    from sciml import MechanisticFit
    from sciml.discover import Stages
    from sciml.io import write_json

    cfg = _config(config)
    model, train, _ = _inputs(inputs, cfg)
    fitted = MechanisticFit.load(fit, model)
    summary = Stages().ensemble(model, fitted, train, engine_names, cfg)
    folder = _fresh(stage_dir(results, "ensemble-distillation"))
    write_json(folder / "ensemble.json", summary)
    return str(folder / "ensemble.json")


@task(name="selection-and-refit", **CACHED)
def selection_and_refit(
    inputs: dict[str, Any],
    fit: str,
    ude: str | None,
    engines: list[dict[str, Any]],
    config: dict[str, Any],
    results: str,
    ensemble: str | None = None,
) -> str:
    """Choose and refit the formulas, evaluate every model (`sciml.discover.findings_stage`):
    the result files in a results folder (`sciml.discover.Findings`)."""
    from sciml import MechanisticFit, load_ude
    from sciml.discover import EngineCandidates, findings_stage

    cfg = _config(config)
    model, train, test = _inputs(inputs, cfg)
    fitted = MechanisticFit.load(fit, model)
    trained = load_ude(ude, model, train) if ude is not None else None
    found = [EngineCandidates.load(e["folder"], model.states) for e in engines]
    summary = json.loads(Path(ensemble).read_text()) if ensemble else None
    findings = findings_stage(model, fitted, trained, found, summary, train, test, cfg)
    folder = _fresh(stage_dir(results, "selection-and-refit"))
    findings.save(folder)
    print(f"equations: {findings.result['equations']}")
    return str(folder)


class CachedStages:
    """`sciml.discover.Stages` as cached Prefect tasks: each stage is a task over files (its
    inputs by content, upstream results by path), run or read from the cache, and its result
    is loaded back for `sciml.discover.orchestrate`, which runs the same pipeline as the
    library's `run_discovery`."""

    def __init__(self, inputs: dict[str, Any], config: dict[str, Any], results: str | Path):
        self.inputs, self.config, self.results = inputs, config, str(results)
        self.paths: dict[str, Any] = {"engines": []}  # stage results, for the stages after

    def _run(self, name: str, t: Any, *args: Any) -> Any:
        self.paths[name] = in_results(t, self.results)(*args)
        return self.paths[name]

    def mechanistic(self, model: Any, train: Any, config: Any) -> Any:
        from sciml import MechanisticFit

        path = self._run("fit", mechanistic_fit, self.inputs, self.config, self.results)
        return MechanisticFit.load(path, model)

    def ude(self, fit: Any, train: Any, config: Any) -> Any:
        from sciml import load_ude

        args = (self.inputs, self.paths["fit"], self.config, self.results)
        return load_ude(self._run("ude", ude_training, *args), fit.model, train)

    def dense(self, trained: Any, train: Any, config: Any) -> Any:
        import pandas as pd

        from sciml.discover import DenseSamples

        args = (self.inputs, self.paths["ude"], self.config, self.results)
        frame = pd.read_parquet(self._run("dense", dense_sampling, *args))
        return DenseSamples.from_frame(frame, self.inputs["states"], self.inputs["residual_states"])

    def engine(self, dense: Any, engine: str, config: Any) -> Any:
        from sciml.discover import EngineCandidates

        args = (engine, self.inputs, self.paths["dense"], self.config, self.results)
        record = self._run(f"engine:{engine}", symbolic_regression, *args)
        self.paths["engines"].append(record)
        return EngineCandidates.load(record["folder"], self.inputs["states"])

    def ensemble(self, model: Any, fit: Any, train: Any, engines: Any, config: Any) -> Any:
        args = (self.inputs, self.paths["fit"], list(engines), self.config, self.results)
        return json.loads(Path(self._run("ensemble", ensemble_distillation, *args)).read_text())

    def findings(self, model: Any, fit: Any, trained: Any, engines: Any, *rest: Any) -> Any:
        from sciml.discover import Findings

        chosen = {e.engine for e in engines}  # the orchestrator drops engines it won't select
        records = [r for r in self.paths["engines"] if r["engine"] in chosen]
        args = (
            self.inputs,
            self.paths["fit"],
            self.paths.get("ude") if trained is not None else None,
            records,
            self.config,
            self.results,
            self.paths.get("ensemble"),
        )
        return Findings.load(self._run("selection", selection_and_refit, *args))


@task(name="report", **UNCACHED, **IO)
def report(out: str) -> str | None:
    """Render the review report (`report.html`), when the report renderer is installed."""
    try:
        from sciml.report import render_report
    except ImportError:
        print("report: sciml.report is not available; no report.html")
        return None
    return str(render_report(out))


@task(name="publish-artifacts", **UNCACHED, **IO)
def publish_artifacts(out: str, report_path: str | None) -> list[str]:
    """Markdown (equations), table (Pareto front) and link (report) artifacts in the UI."""
    import pandas as pd

    folder = Path(out)
    result = json.loads((folder / "discovered.json").read_text())
    key = _artifact_key(folder)
    lines = [f"# Discovered equations: `{folder.name}`", "", "| state | d/dt |", "|---|---|"]
    lines += [f"| {s} | `{eq}` |" for s, eq in result["equations"].items()]
    if result.get("parameters"):
        lines += ["", "**Fitted mechanistic parameters**", "", "| name | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in result["parameters"].items()]
    for state, chosen in result.get("residual", {}).items():
        lines.append(
            f"\n- residual of `{state}`: `{chosen.get('final', chosen.get('equation'))}` "
            f"({chosen.get('engine')}, complexity {chosen.get('complexity')})"
        )
    if ens := result.get("ensemble"):
        lines += [
            "",
            f"**Ensemble of {ens['members']} UDEs** (frequency; median and "
            f"{ens['level']:.0%} interval of the coefficient)",
            "",
            "| state | term | frequency | median | interval |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {t['state']} | `{t['term']}` | {t['frequency']:.0%} | {t['median']:.4g} | "
            f"[{t['interval'][0]:.4g}, {t['interval'][1]:.4g}] |"
            for t in ens["terms"]
        ]
    ids = [str(create_markdown_artifact("\n".join(lines), key=f"{key}-equations"))]
    csv = folder / "equations.csv"
    if csv.exists():
        table = pd.read_csv(csv)
        cols = ["state", "engine", "complexity", "loss", "score", "equation", "selected"]
        rows = table[cols].to_dict(orient="records")
        ids.append(str(create_table_artifact(rows, key=f"{key}-pareto")))
    if report_path:
        uri = Path(report_path).resolve().as_uri()
        ids.append(str(create_link_artifact(uri, link_text="report.html", key=f"{key}-report")))
    return ids


def _artifact_key(folder: Path) -> str:
    """Artifact keys: lower-case letters, digits and dashes."""
    import re

    return re.sub(r"[^a-z0-9-]+", "-", folder.name.lower()).strip("-") or "run"


# -- a whole discovery run, for sweeps (one task per run, spread over Dask workers) ------------
@task(name="discovery-run", **UNCACHED)
def discovery_run(run: dict[str, Any]) -> dict[str, Any]:
    """Every discovery stage for one (data, model, seed) via `sciml.discover.run_discovery`."""
    from pipelines.cli import _quiet_expected_failures
    from sciml.discover import run_discovery

    _quiet_expected_failures()  # a Dask worker's console: the sweep reports failures once
    t = time.perf_counter()
    try:
        result = run_discovery(
            run["data"],
            run["model"],
            run["out"],
            seed=run["seed"],
            engines=tuple(run["engines"]),
            quick=run["quick"],
            holdout=run["holdout"],
            ude={k: v for k, v in (run.get("ude") or {}).items() if v is not None},
            show_progress=False,
        )
    finally:
        import jax

        # A worker process runs many discoveries: its compiled programs would pile up until
        # the process runs out of memory mappings (vm.max_map_count), where XLA aborts.
        jax.clear_caches()
    report = _render_report(result["out"])
    return {
        "out": result["out"],
        "parameters": result["parameters"],
        "equations": result["equations"],
        "seconds": time.perf_counter() - t,
        "report": report,
    }


def _render_report(out: str) -> str | None:
    try:
        from sciml.report import render_report
    except ImportError:
        return None
    return str(render_report(out))


# -- the other stages --------------------------------------------------------------------------
@task(name="cnf", **UNCACHED)
def cnf(data: str, out: str, test: str | None, seed: int, steps: int | None) -> dict[str, Any]:
    """Fit a continuous normalising flow (`sciml.cnf.run_cnf`); returns its metrics."""
    import pandas as pd

    from sciml.cnf import run_cnf

    metrics = _jsonable(run_cnf(data, out, test=test, seed=seed, steps=steps))
    curve = pd.read_csv(Path(out) / "history.csv").to_dict(orient="records")
    _loss_curve_artifact(Path(out), "cnf", curve)
    return metrics


@task(name="classify", **UNCACHED)
def classify(
    dataset: str | None,
    data: str | None,
    test: str | None,
    out: str,
    seed: int,
    epochs: int | None,
) -> dict[str, Any]:
    """Train the neural-ODE classifier (`sciml.classify.run_classify`); returns its metrics."""
    from sciml.classify import run_classify

    metrics = _jsonable(
        run_classify(dataset=dataset, data=data, test=test, out=out, seed=seed, epochs=epochs)
    )
    history = metrics["history"]
    curve = [
        {"epoch": i + 1, **{k: v[i] for k, v in history.items()}}
        for i in range(len(history["loss"]))
    ]
    _loss_curve_artifact(Path(out), "classify", curve)
    return metrics


def _loss_curve_artifact(out: Path, stage: str, rows: list[dict[str, Any]]) -> None:
    """The training and validation curves of a CNF or classifier run as a table artifact."""
    clean = [{k: (None if v != v else v) for k, v in row.items()} for row in rows]  # NaN: None
    create_table_artifact(
        clean,
        key=f"{_artifact_key(out)}-{stage}-loss-curve",
        description=f"{stage}: training and validation curves ({out})",
    )


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=lambda v: getattr(v, "tolist", lambda: str(v))()))
