"""Prefect flows: discovery (one task per stage), CNF, classifier, the parent pipeline, sweeps.

Parameters are pydantic models (`pipelines.params`), so Prefect validates a deployment's
parameters before a run starts. Run them from the command line (`sciml discover|cnf|classify|
sweep`), from Python (`discover(DiscoverParams(...))`), or as deployments (`sciml deploy`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from prefect import flow

from . import tasks
from ._signals import note_flow_run
from .params import (
    ClassifyParams,
    CNFParams,
    DiscoverParams,
    PipelineParams,
    ReviewParams,
    SweepParams,
)
from .review import await_review, final_state, review_refit

FLOW_OPTIONS = {"log_prints": True, "result_serializer": "json"}


def discovery_config(params: DiscoverParams) -> dict[str, Any]:
    """The run's `DiscoveryConfig` as a JSON-able dict (raises `InputError` on bad settings)."""
    from sciml.discover import DiscoveryConfig

    config = DiscoveryConfig.make(
        seed=params.seed,
        engines=params.engines,
        quick=params.quick,
        holdout=params.holdout,
        ensemble=params.ensemble,
    )
    if overrides := params.ude.overrides():
        config = dataclasses.replace(config, ude=dataclasses.replace(config.ude, **overrides))
    return json.loads(json.dumps(config.to_dict()))


@flow(name="discover", **FLOW_OPTIONS)
def discover(params: DiscoverParams) -> dict[str, Any]:
    """Trajectory data and a model file in; docs/outputs.md's files in `params.out`.

    The library's pipeline (`sciml.discover.orchestrate`, the same as `run_discovery`) with
    each stage a cached task (`pipelines.tasks.CachedStages`): ingest, mechanistic fit, UDE
    training, dense sampling, one symbolic regression per engine, selection and refit; then the
    report and the artifacts (equations, Pareto table, report link). Without a `[residual]`
    section the run is a plain mechanistic fit.
    """
    note_flow_run()  # marked Cancelled if SIGTERM stops it (pipelines._signals)
    from sciml.discover import RESULT_FILES, DiscoveryConfig, TimeBudget, orchestrate, run_log
    from sciml.io import run_directory

    config = discovery_config(params)
    results = str(params.results_dir.resolve())
    budget = TimeBudget(params.max_minutes)
    loggers = ("prefect.flow_runs", "prefect.task_runs")
    with run_directory(params.out, clear=RESULT_FILES) as out, run_log(out, loggers):
        inputs = tasks.ingest(str(params.data), None if params.model is None else str(params.model))
        model, data = tasks.loaded(inputs)
        stages = tasks.CachedStages(inputs, config, results)
        result = orchestrate(
            model,
            data,
            DiscoveryConfig.from_dict(config),
            out,
            stages=stages,
            budget=budget,
            inputs=inputs,
        )
        discovered = str(out / "discovered.json")
        report = tasks.report(str(out))
        tasks.publish_artifacts(str(out), report)
    reviewed: dict[str, Any] | None = None
    if params.review and not result.get("terms"):
        print("review: nothing was discovered, so there is nothing to review")
    elif params.review:  # the folder's lock is released while a person decides
        reviewed = await_review(str(out), params.review_timeout)
        if reviewed.get("revision"):
            tasks.publish_artifacts(str(out), report)
    value = {
        "out": str(out),
        "discovered": discovered,
        "report": report,
        "equations": result["equations"],
        "parameters": result["parameters"],
        "timings": result["timings"],
        "review": reviewed,
        "partial": result.get("partial"),
    }
    return value if reviewed is None else final_state(reviewed, value)


@flow(name="review", **FLOW_OPTIONS)
def review(params: ReviewParams) -> dict[str, Any]:
    """A reviewer's decision on a finished discovery run: refit its selection under it (no
    UDE retraining) into the run's next revision. Without a decision in `params`, the flow run
    pauses for one in the Prefect UI (a run that ended "awaiting review" is resumed so)."""
    note_flow_run()  # marked Cancelled if SIGTERM stops it (pipelines._signals)
    out = str(params.out.resolve())
    if params.reject or params.keep or params.add:
        decision = {
            "reject": params.reject,
            "keep": params.keep,
            "add": params.add,
            "reviewer": params.reviewer or "unknown (Prefect)",
            "note": params.note,
            "via": "prefect",
        }
        summary = review_refit(out, decision)
    else:
        summary = await_review(out, params.timeout)
    if summary.get("revision"):
        tasks.publish_artifacts(out, str(Path(out) / "report.html"))
    return final_state(summary, {"out": out, **summary})


@flow(name="cnf", **FLOW_OPTIONS)
def cnf(params: CNFParams) -> dict[str, Any]:
    """A continuous normalising flow fitted to a table of samples (`sciml cnf`)."""
    note_flow_run()  # marked Cancelled if SIGTERM stops it (pipelines._signals)
    return tasks.cnf(params.data, str(params.out), params.test, params.seed, params.steps)


@flow(name="classify", **FLOW_OPTIONS)
def classify(params: ClassifyParams) -> dict[str, Any]:
    """The neural-ODE classifier (`sciml classify`)."""
    note_flow_run()  # marked Cancelled if SIGTERM stops it (pipelines._signals)
    return tasks.classify(
        params.dataset,
        str(params.data) if params.data else None,
        str(params.test) if params.test else None,
        str(params.out),
        params.seed,
        params.epochs,
    )


@flow(name="sciml-pipeline", **FLOW_OPTIONS)
def pipeline(params: PipelineParams) -> dict[str, Any]:
    """The parent flow: discovery, CNF and classifier as subflows (each one optional)."""
    note_flow_run()  # marked Cancelled if SIGTERM stops it (pipelines._signals)
    results: dict[str, Any] = {}
    if params.discover is not None:
        results["discover"] = discover(params.discover)
    if params.cnf is not None:
        results["cnf"] = cnf(params.cnf)
    if params.classify is not None:
        results["classify"] = classify(params.classify)
    return results


def dask_runner(
    address: str | None,
    n_workers: int = 2,
    cluster_class: str | None = None,
    cluster_kwargs: dict[str, Any] | None = None,
) -> Any:
    """An existing Dask cluster by scheduler address; a cluster of `cluster_class` (e.g.
    `dask_jobqueue.SLURMCluster`, imported here and only here) started for the sweep; or a
    local cluster of processes."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    if cluster_class:
        check_cluster_class(cluster_class)
        return DaskTaskRunner(
            cluster_class=cluster_class, cluster_kwargs=cluster_kwargs or {"n_workers": n_workers}
        )
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,  # JAX uses every core of a worker anyway
            "processes": True,
            "dashboard_address": None,
        }
    )


def check_cluster_class(name: str) -> None:
    """Raise `InputError` unless `name` (module.Class) can be imported."""
    import importlib

    from sciml import InputError

    module, _, attr = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attr, None)
    except ImportError as err:
        extra = " (pip install 'sciml[hpc]')" if module.startswith("dask_jobqueue") else ""
        raise InputError(f"cluster class {name}: cannot import {module}{extra}: {err}") from None
    if not callable(found):
        raise InputError(f"cluster class {name}: {module} has no class {attr!r}")


@flow(name="discovery-sweep-runs", **FLOW_OPTIONS)
def _sweep_runs(params: SweepParams) -> list[dict[str, Any]]:
    note_flow_run()
    runs = [r.model_dump(mode="json") for r in params.runs()]
    print(f"sweep: {len(runs)} discovery runs")
    futures = tasks.discovery_run.map(runs)
    futures.wait()
    states = [f.state for f in futures]
    failed = [(r["out"], s) for r, s in zip(runs, states) if not s.is_completed()]
    for out, state in failed:
        print(f"sweep: run {out} failed: {state.message}")
    done = [f.result() for f, s in zip(futures, states) if s.is_completed()]
    if done:
        from sciml.report import render_index

        print(f"sweep: index of the runs: {render_index(params.out)}")
    if failed:
        failed[0][1].result()  # raises the first failure's exception
    return done


@flow(name="discovery-sweep", **FLOW_OPTIONS)
def sweep(params: SweepParams) -> list[dict[str, Any]]:
    """Discovery over data files x model files x seeds, one task per run, on a Dask cluster.

    `params.dask_address` names an existing cluster's scheduler (`tcp://host:8786`);
    `params.cluster_class` a cluster class started for the sweep (e.g.
    `dask_jobqueue.SLURMCluster`, with `params.cluster_kwargs`); without either a local cluster
    of `params.n_workers` processes is started for the sweep and stopped after. Each run writes
    its report; the sweep writes `OUT/index.html` over them.
    """
    note_flow_run()  # marked Cancelled if SIGTERM stops it (pipelines._signals)
    runner = dask_runner(
        params.dask_address, params.n_workers, params.cluster_class, params.cluster_kwargs
    )
    return _sweep_runs.with_options(task_runner=runner)(params)


FLOWS = {
    "discover": discover,
    "review": review,
    "cnf": cnf,
    "classify": classify,
    "sweep": sweep,
}
